//! Buying credit packs: the purchase record, how a Stripe PaymentIntent's
//! state moves it, how many credits a payment buys, and what a dispute takes
//! back. Pure decisions over plain data with `now` taken from the wallet; the
//! Durable Object persists what comes back.
//!
//! At most once per PaymentIntent: crediting writes a [`CreditedPayment`]
//! marker keyed by the PaymentIntent id in the same commit as the ledger
//! entry, and every path that could credit (the purchase request's own
//! answer from Stripe, a webhook, a refresh) checks it first. Markers are
//! permanent, unlike idempotency records.

use crate::config::Pack;
use crate::money::Credits;
use crate::stripe::{ChargeRefund, DisputeOutcome, IntentState, IntentStatus};
use crate::time::rfc3339;
use crate::wallet::{EntryKind, LedgerEntry, PurchaseCredit, PurchaseSource, Rejection, Wallet};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Stripe keeps an idempotency key for at least 24 hours. A purchase whose
/// charge request got no answer is sent again (same key) only within this
/// window, so a resend can only ever return the first charge, never make a
/// second one.
pub const RESEND_WINDOW_SECONDS: i64 = 23 * 3600;
/// While one request's charge call is in flight, a concurrent replay of the
/// same purchase does not send another (longer than the Stripe call's timeouts).
pub const CHARGE_LEASE_SECONDS: i64 = 90;

/// The fingerprint an auto top-up purchase records in place of a request's.
pub const AUTO_TOP_UP_FINGERPRINT: &str = "auto_top_up";

pub use crate::ids::{
    auto_top_up_purchase_id, charge_idempotency_key, customer_idempotency_key, is_purchase_id,
    purchase_id,
};
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseStatus {
    /// The charge is under way (or its answer was lost); credits follow on success.
    Processing,
    /// The bank wants the buyer to authenticate: finish with `client_secret` in Stripe.js.
    RequiresAction,
    /// Paid and credited.
    Succeeded,
    /// Not paid (declined, canceled or refused by Stripe); nothing was credited.
    Failed,
    /// Paid, then disputed by the buyer's bank; unspent credits were taken back.
    Disputed,
    /// An auto top-up charge never sent to Stripe, canceled because the owner
    /// switched auto top-up off (or changed its pack) or a dispute did.
    Canceled,
}

impl PurchaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseStatus::Processing => "processing",
            PurchaseStatus::RequiresAction => "requires_action",
            PurchaseStatus::Succeeded => "succeeded",
            PurchaseStatus::Failed => "failed",
            PurchaseStatus::Disputed => "disputed",
            PurchaseStatus::Canceled => "canceled",
        }
    }

    /// What a PaymentIntent's status means for its purchase.
    pub fn of_intent(status: &IntentStatus) -> PurchaseStatus {
        match status {
            IntentStatus::Succeeded => PurchaseStatus::Succeeded,
            // A PaymentIntent created with confirm=true waits for the buyer
            // when it needs confirmation again; Stripe.js finishes both.
            IntentStatus::RequiresAction | IntentStatus::RequiresConfirmation => {
                PurchaseStatus::RequiresAction
            }
            // After a failed attempt Stripe waits for another payment method.
            IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => PurchaseStatus::Failed,
            // Not final (capture is automatic, so requires_capture is transient).
            IntentStatus::Processing | IntentStatus::RequiresCapture | IntentStatus::Other(_) => {
                PurchaseStatus::Processing
            }
        }
    }

    /// Paid: later PaymentIntent news never moves it back.
    pub fn is_paid(self) -> bool {
        matches!(self, PurchaseStatus::Succeeded | PurchaseStatus::Disputed)
    }
}

/// One attempt to buy a pack, keyed by its derived id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub id: String,
    /// Who started it; purchases stored before auto top-up are the owner's.
    #[serde(default)]
    pub source: PurchaseSource,
    pub status: PurchaseStatus,
    pub pack_id: String,
    /// The pack's credits and price when it was bought (the catalogue may change later).
    pub credits: Credits,
    pub amount_cents: i64,
    pub currency: String,
    /// The request that made it; none when it was first seen in a Stripe event.
    pub idempotency_key: Option<String>,
    pub fingerprint: Option<String>,
    /// The payment method charged; a resend charges the same one.
    pub payment_method_id: Option<String>,
    pub payment_intent_id: Option<String>,
    /// Kept only while the buyer must act, and shown only to the owner.
    pub client_secret: Option<String>,
    pub decline_code: Option<String>,
    /// Credits its payment granted, and the ledger entry that granted them.
    pub credits_granted: Credits,
    pub entry_id: Option<String>,
    /// Credits taken back after a dispute.
    pub credits_reversed: Credits,
    /// What refunds and disputes did to it since it was paid (Stripe's side).
    #[serde(default)]
    pub reconciliation: Reconciliation,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the charge request now in flight was sent; none when none is.
    pub charge_started_at: Option<DateTime<Utc>>,
}

impl Purchase {
    /// A new purchase about to be charged (its charge request counts as sent).
    pub fn open(
        id: &str,
        pack: &Pack,
        idempotency_key: &str,
        fingerprint: &str,
        payment_method_id: &str,
        now: DateTime<Utc>,
    ) -> Purchase {
        Purchase {
            id: id.to_string(),
            source: PurchaseSource::Owner,
            status: PurchaseStatus::Processing,
            pack_id: pack.id.clone(),
            credits: pack.credits,
            amount_cents: pack.price_cents,
            currency: pack.currency.clone(),
            idempotency_key: Some(idempotency_key.to_string()),
            fingerprint: Some(fingerprint.to_string()),
            payment_method_id: Some(payment_method_id.to_string()),
            payment_intent_id: None,
            client_secret: None,
            decline_code: None,
            credits_granted: Credits::ZERO,
            entry_id: None,
            credits_reversed: Credits::ZERO,
            reconciliation: Reconciliation::default(),
            created_at: now,
            updated_at: now,
            charge_started_at: Some(now),
        }
    }

    /// The purchase auto top-up starts: its charge is sent after the commit,
    /// to the default payment method on file then.
    pub fn auto_top_up(
        id: &str,
        idempotency_key: &str,
        pack: &Pack,
        now: DateTime<Utc>,
    ) -> Purchase {
        Purchase {
            source: PurchaseSource::AutoTopUp,
            payment_method_id: None,
            charge_started_at: None,
            fingerprint: Some(AUTO_TOP_UP_FINGERPRINT.to_string()),
            ..Purchase::open(id, pack, idempotency_key, AUTO_TOP_UP_FINGERPRINT, "", now)
        }
    }

    /// Stripe's answer to the charge was never recorded.
    fn unanswered(&self) -> bool {
        self.status == PurchaseStatus::Processing && self.payment_intent_id.is_none()
    }

    /// Stripe still remembers the charge's idempotency key at `now`, so a
    /// resend can only ever return the first charge, never make a second.
    fn key_remembered(&self, now: DateTime<Utc>) -> bool {
        now - self.created_at < Duration::seconds(RESEND_WINDOW_SECONDS)
    }

    /// No send of the charge is under way at `now` (its lease ran out).
    pub fn charge_lease_free(&self, now: DateTime<Utc>) -> bool {
        self.charge_started_at
            .is_none_or(|at| now - at >= Duration::seconds(CHARGE_LEASE_SECONDS))
    }

    /// The one rule of a resend: the charge is unanswered, nobody is
    /// sending it, and Stripe still remembers its key.
    fn may_resend(&self, now: DateTime<Utc>) -> bool {
        self.unanswered() && self.key_remembered(now) && self.charge_lease_free(now)
    }

    /// Whether auto top-up must send this purchase's charge at `now`.
    pub fn needs_auto_charge(&self, now: DateTime<Utc>) -> bool {
        self.source == PurchaseSource::AutoTopUp && self.may_resend(now)
    }

    /// Whether a replay at `now` must send the charge request again (the
    /// first request chose its card).
    pub fn needs_charge(&self, now: DateTime<Utc>) -> bool {
        self.payment_method_id.is_some() && self.may_resend(now)
    }

    /// The charge got no answer while Stripe remembered its key, and nobody
    /// is sending it: a resend could now charge twice, so it must end.
    pub fn resend_window_closed(&self, now: DateTime<Utc>) -> bool {
        self.unanswered() && !self.key_remembered(now) && self.charge_lease_free(now)
    }

    /// The purchase as clients see it. `client_secret` only when the caller
    /// is the one who completes the payment.
    pub fn to_json(&self, show_client_secret: bool) -> Value {
        let mut out = json!({
            "id": self.id,
            "object": "purchase",
            "source": self.source.as_str(),
            "status": self.status.as_str(),
            "pack_id": self.pack_id,
            "credits": self.credits,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "payment_intent_id": self.payment_intent_id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        });
        if self.status == PurchaseStatus::RequiresAction && show_client_secret {
            if let Some(secret) = &self.client_secret {
                out["client_secret"] = json!(secret);
            }
        }
        if self.status == PurchaseStatus::Failed {
            out["decline_code"] = json!(self.decline_code);
        }
        if self.status.is_paid() {
            out["credits_granted"] = json!(self.credits_granted);
            out["entry_id"] = json!(self.entry_id);
        }
        if self.status == PurchaseStatus::Disputed {
            out["credits_reversed"] = json!(self.credits_reversed);
        }
        if self.status.is_paid() {
            let r = &self.reconciliation;
            out["amount_refunded_cents"] = json!(r.amount_refunded_cents);
            out["credits_refunded"] = json!(r.credits_refunded);
            out["credits_unrecovered"] = json!(r.credits_unrecovered);
            out["dispute_status"] = json!(r.dispute_status.map(DisputeStatus::as_str));
            out["credits_reinstated"] = json!(r.credits_reinstated);
        }
        out
    }

    /// Whether the charge was ever sent to Stripe: the first attempt records
    /// the payment method it charged, and every resend repeats it.
    pub fn charge_was_sent(&self) -> bool {
        self.payment_method_id.is_some()
            || self.payment_intent_id.is_some()
            || self.charge_started_at.is_some()
    }

    /// Cancels an auto top-up charge that was never sent. Whether it did.
    pub fn cancel_unsent(&mut self, now: DateTime<Utc>) -> bool {
        if self.source != PurchaseSource::AutoTopUp
            || self.status != PurchaseStatus::Processing
            || self.charge_was_sent()
        {
            return false;
        }
        self.status = PurchaseStatus::Canceled;
        self.updated_at = now;
        true
    }
}

/// What a purchase request finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// No purchase has this key: it may be created.
    New,
    /// The purchase exists. `send_charge`: this request must (re)send the
    /// charge, and the purchase now records that it is being sent.
    /// `changed`: the purchase must be stored again.
    Existing {
        purchase: Box<Purchase>,
        send_charge: bool,
        changed: bool,
    },
    /// The key was used for a different request.
    KeyReused,
}

/// Decides what a purchase request with `idempotency_key` (and its request
/// `fingerprint`, buying `pack_id`) does, given the purchase stored under its id.
pub fn start(
    existing: Option<Purchase>,
    idempotency_key: &str,
    fingerprint: &str,
    pack_id: &str,
    now: DateTime<Utc>,
) -> Start {
    let Some(mut purchase) = existing else {
        return Start::New;
    };
    match (&purchase.idempotency_key, &purchase.fingerprint) {
        (Some(key), Some(fp)) if key == idempotency_key && fp == fingerprint => {
            let send_charge = purchase.needs_charge(now);
            if send_charge {
                purchase.charge_started_at = Some(now);
                purchase.updated_at = now;
            }
            Start::Existing {
                purchase: Box::new(purchase),
                send_charge,
                changed: send_charge,
            }
        }
        // First seen in a Stripe event carrying this very id (the same org and
        // key): the request claims it, and nothing is charged again.
        (None, None) if purchase.pack_id == pack_id => {
            purchase.idempotency_key = Some(idempotency_key.to_string());
            purchase.fingerprint = Some(fingerprint.to_string());
            purchase.updated_at = now;
            Start::Existing {
                purchase: Box::new(purchase),
                send_charge: false,
                changed: true,
            }
        }
        _ => Start::KeyReused,
    }
}

/// Why a succeeded payment was not credited. Logged for a person to look
/// at; the payment stays unmarked, so a later, valid answer still credits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditRefusal {
    /// Not in usd, the only currency packs are priced in.
    WrongCurrency,
    /// Stripe reports nothing (or too little to buy 0.0001 credit) received.
    NothingReceived,
    /// The payload does not say what was received.
    AmountUnknown,
    /// No purchase this organization started names the PaymentIntent: only
    /// our own purchases credit, whatever an intent's metadata claims.
    NotOurPurchase,
    /// The PaymentIntent's customer is not the organization's.
    CustomerMismatch,
}

/// Credits bought by a payment: the pack's credits when Stripe received at
/// least the pack's price; proportionally fewer (truncated to 0.0001 credit)
/// when it received less; never more than the pack, so an excess buys
/// nothing extra. Only usd payments buy credits.
pub fn credits_for_payment(
    pack_credits: Credits,
    price_cents: i64,
    amount_received_cents: Option<i64>,
    currency: &str,
) -> Result<Credits, CreditRefusal> {
    if currency != "usd" {
        return Err(CreditRefusal::WrongCurrency);
    }
    let received = amount_received_cents.ok_or(CreditRefusal::AmountUnknown)?;
    if received <= 0 || price_cents <= 0 {
        return Err(CreditRefusal::NothingReceived);
    }
    if received >= price_cents {
        return Ok(pack_credits);
    }
    let credits = share_of(pack_credits, received, price_cents);
    if credits.is_positive() {
        Ok(credits)
    } else {
        Err(CreditRefusal::NothingReceived)
    }
}

/// `credits × part / whole`, rounded down to 0.0001 credit; `part` is
/// clamped to `0..=whole`. Exact: both factors are far inside i128 (credits
/// < 2^53 units, cents < 10^8).
pub fn share_of(credits: Credits, part: i64, whole: i64) -> Credits {
    if whole <= 0 {
        return Credits::ZERO;
    }
    let part = part.clamp(0, whole);
    let units = (credits.units() as i128 * part as i128) / whole as i128;
    Credits::from_units(units as i64)
}

/// How a dispute stands, as far as this service knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    Open,
    Won,
    Lost,
    /// Closed without a decision for either side (`warning_closed`, …).
    Closed,
}

impl DisputeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DisputeStatus::Open => "open",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
            DisputeStatus::Closed => "closed",
        }
    }
}

/// What Stripe's refunds and disputes did to one paid purchase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// Stripe's cumulative refunded amount, as of the newest refund applied.
    pub amount_refunded_cents: i64,
    /// Credits refund reversals took back.
    pub credits_refunded: Credits,
    /// Credits refunds should have taken back but that were already spent
    /// (or held): written off, never taken later.
    pub credits_unrecovered: Credits,
    pub dispute_status: Option<DisputeStatus>,
    /// Credits given back when the dispute was won.
    pub credits_reinstated: Credits,
}

/// The permanent at-most-once record of one PaymentIntent's credits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditedPayment {
    pub payment_intent_id: String,
    pub purchase_id: Option<String>,
    pub pack_id: Option<String>,
    /// Credits granted (zero when it was disputed before it was credited).
    pub credits: Credits,
    pub amount_received_cents: i64,
    pub entry_id: Option<String>,
    pub entry_seq: Option<u64>,
    pub disputed: bool,
    /// Credits the dispute took back.
    pub credits_reversed: Credits,
    #[serde(default)]
    pub reconciliation: Reconciliation,
}

impl CreditedPayment {
    /// A marker for news about a payment not credited yet (a dispute or a
    /// refund that overtook the success): it holds the news until then.
    fn before_credit(payment_intent_id: &str, purchase: Option<&Purchase>) -> CreditedPayment {
        CreditedPayment {
            payment_intent_id: payment_intent_id.to_string(),
            purchase_id: purchase.map(|p| p.id.clone()),
            pack_id: purchase.map(|p| p.pack_id.clone()),
            credits: Credits::ZERO,
            amount_received_cents: 0,
            entry_id: None,
            entry_seq: None,
            disputed: false,
            credits_reversed: Credits::ZERO,
            reconciliation: Reconciliation::default(),
        }
    }

    /// A success may still credit it: nothing was credited and no dispute
    /// came first (a refund that came first is taken back with the credit).
    fn awaits_credit(&self) -> bool {
        self.entry_id.is_none() && !self.disputed
    }

    /// Credits of this payment that left the buyer's hands: taken back by
    /// refunds and the dispute (less what was reinstated) or written off.
    /// Never more than `credits`.
    pub fn credits_settled_back(&self) -> Credits {
        let r = &self.reconciliation;
        let settled = r.credits_refunded.units()
            + r.credits_unrecovered.units()
            + self.credits_reversed.units()
            - r.credits_reinstated.units();
        assert!(
            (0..=self.credits.units()).contains(&settled),
            "payment {} settled back {settled} units of {}",
            self.payment_intent_id,
            self.credits.units()
        );
        Credits::from_units(settled)
    }
}

/// The result of a charge request, as the purchase request saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChargeOutcome {
    /// Stripe answered with the PaymentIntent (also: webhooks and refreshes).
    Intent { intent: IntentState },
    /// Stripe refused the request (a declined card, an invalid request):
    /// nothing was charged.
    Refused {
        payment_intent_id: Option<String>,
        decline_code: Option<String>,
    },
    /// No answer (network, timeout, Stripe unavailable): a replay resends.
    Unknown,
}

/// What settling an outcome changed, for the caller to persist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// The purchase after the change, and whether it must be stored.
    pub purchase: Option<Purchase>,
    pub purchase_changed: bool,
    /// A new or updated marker to store.
    pub payment: Option<CreditedPayment>,
    /// The ledger entries, in order (a credit may be followed by the
    /// reversal of a refund that arrived before it).
    pub entries: Vec<LedgerEntry>,
    pub refusal: Option<CreditRefusal>,
}

/// Applies a charge outcome to the wallet and purchase. `purchase` is the
/// record the outcome is about (if there is one); `payment` the marker of the
/// outcome's PaymentIntent (if one exists); `customer` the organization's
/// Stripe customer: a success credits only a purchase of ours charged to it.
pub fn settle(
    wallet: &mut Wallet,
    purchase: Option<Purchase>,
    payment: Option<&CreditedPayment>,
    outcome: &ChargeOutcome,
    customer: Option<&str>,
) -> Result<Settlement, Rejection> {
    let now = wallet.now();
    let mut settlement = Settlement {
        purchase,
        ..Settlement::default()
    };
    match outcome {
        ChargeOutcome::Unknown => {
            if let Some(p) = settlement.purchase.as_mut() {
                if p.charge_started_at.take().is_some() {
                    p.updated_at = now;
                    settlement.purchase_changed = true;
                }
            }
        }
        ChargeOutcome::Refused {
            payment_intent_id,
            decline_code,
        } => {
            if let Some(p) = settlement.purchase.as_mut() {
                if !p.status.is_paid() && p.status != PurchaseStatus::Canceled {
                    p.status = PurchaseStatus::Failed;
                    p.decline_code = decline_code.clone();
                    if p.payment_intent_id.is_none() {
                        p.payment_intent_id = payment_intent_id.clone();
                    }
                    p.client_secret = None;
                    p.charge_started_at = None;
                    p.updated_at = now;
                    settlement.purchase_changed = true;
                }
            }
        }
        ChargeOutcome::Intent { intent } => {
            settle_intent(wallet, &mut settlement, payment, intent, customer)?;
        }
    }
    Ok(settlement)
}

/// A PaymentIntent's news: a success credits once (taking back at once a
/// refund that overtook it), and the purchase follows the intent.
fn settle_intent(
    wallet: &mut Wallet,
    settlement: &mut Settlement,
    payment: Option<&CreditedPayment>,
    intent: &IntentState,
    customer: Option<&str>,
) -> Result<(), Rejection> {
    let now = wallet.now();
    if customer.is_none() || intent.customer.as_deref() != customer {
        // Not a payment of ours: it credits nothing and moves no purchase
        // (binding ours to it would hide, or block, its real charge).
        settlement.refusal =
            (intent.status == IntentStatus::Succeeded).then_some(CreditRefusal::CustomerMismatch);
        return Ok(());
    }
    let mut marker = payment.cloned();
    if intent.status == IntentStatus::Succeeded
        && marker.as_ref().is_none_or(CreditedPayment::awaits_credit)
    {
        match credit(wallet, settlement.purchase.as_ref(), intent, customer)? {
            Ok((entry, mut new_marker)) => {
                settlement.entries.push(entry);
                if let Some(earlier) = &marker {
                    new_marker.reconciliation.amount_refunded_cents =
                        earlier.reconciliation.amount_refunded_cents;
                    let whole = intent.amount_cents.max(new_marker.amount_received_cents);
                    settlement
                        .entries
                        .extend(take_refund_share(wallet, &mut new_marker, whole, 0));
                }
                settlement.payment = Some(new_marker.clone());
                marker = Some(new_marker);
            }
            Err(refusal) => settlement.refusal = Some(refusal),
        }
    }
    if let Some(p) = settlement.purchase.as_mut() {
        settlement.purchase_changed |= follow_intent(p, intent, marker.as_ref(), now);
    }
    Ok(())
}

/// A credit's entry and marker, or why there is none.
type Credited = Result<(LedgerEntry, CreditedPayment), CreditRefusal>;

/// Credits a succeeded PaymentIntent of one of our purchases, valued from
/// the purchase's snapshot of its pack.
fn credit(
    wallet: &mut Wallet,
    purchase: Option<&Purchase>,
    intent: &IntentState,
    customer: Option<&str>,
) -> Result<Credited, Rejection> {
    let Some(purchase) = purchase else {
        return Ok(Err(CreditRefusal::NotOurPurchase));
    };
    if customer.is_none() || intent.customer.as_deref() != customer {
        return Ok(Err(CreditRefusal::CustomerMismatch));
    }
    let credits = match credits_for_payment(
        purchase.credits,
        purchase.amount_cents,
        intent.amount_received_cents,
        &intent.currency,
    ) {
        Ok(credits) => credits,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let received = intent.amount_received_cents.unwrap_or_default();
    let entry = wallet.credit_purchase(&PurchaseCredit {
        source: purchase.source,
        pack_id: purchase.pack_id.clone(),
        credits,
        amount_cents: received,
        currency: intent.currency.clone(),
        payment_intent_id: intent.id.clone(),
        purchase_id: Some(purchase.id.clone()),
    })?;
    let marker = CreditedPayment {
        credits,
        amount_received_cents: received,
        entry_id: Some(entry.id.clone()),
        entry_seq: Some(entry.seq),
        ..CreditedPayment::before_credit(&intent.id, Some(purchase))
    };
    Ok(Ok((entry, marker)))
}

/// Moves a purchase to what its PaymentIntent says. Returns whether it changed.
fn follow_intent(
    purchase: &mut Purchase,
    intent: &IntentState,
    marker: Option<&CreditedPayment>,
    now: DateTime<Utc>,
) -> bool {
    let before = purchase.clone();
    if purchase
        .payment_intent_id
        .as_ref()
        .is_some_and(|id| *id != intent.id)
    {
        // Another PaymentIntent names this purchase: it was credited on its
        // own marker, and this purchase follows only its own PaymentIntent.
        return false;
    }
    purchase.payment_intent_id = Some(intent.id.clone());
    purchase.charge_started_at = None;
    let credited = marker.filter(|m| m.credits.is_positive() || m.disputed);
    if let Some(m) = credited {
        reflect(purchase, m);
    }
    if !purchase.status.is_paid() {
        let status = PurchaseStatus::of_intent(&intent.status);
        // A success is shown only once its credits are in the wallet.
        if status != PurchaseStatus::Succeeded || credited.is_some() {
            purchase.status = status;
        }
        purchase.client_secret = (purchase.status == PurchaseStatus::RequiresAction)
            .then(|| intent.client_secret.clone())
            .flatten();
        purchase.decline_code = (purchase.status == PurchaseStatus::Failed)
            .then(|| intent.decline_code.clone())
            .flatten();
    }
    let changed = *purchase != before;
    if changed {
        purchase.updated_at = now;
    }
    changed
}

/// The purchase shows what its payment's marker records.
fn reflect(purchase: &mut Purchase, marker: &CreditedPayment) {
    purchase.credits_granted = marker.credits;
    purchase.entry_id = marker.entry_id.clone();
    purchase.reconciliation = marker.reconciliation.clone();
    if marker.disputed {
        purchase.status = PurchaseStatus::Disputed;
        purchase.credits_reversed = marker.credits_reversed;
        purchase.client_secret = None;
        purchase.charge_started_at = None;
    }
}

/// Stores `marker` and mirrors it on the purchase, as a settlement.
fn settled(mut settlement: Settlement, marker: CreditedPayment, now: DateTime<Utc>) -> Settlement {
    if let Some(p) = settlement.purchase.as_mut() {
        let before = p.clone();
        reflect(p, &marker);
        if *p != before {
            p.updated_at = now;
            settlement.purchase_changed = true;
        }
    }
    settlement.payment = Some(marker);
    settlement
}

/// Takes back the share of `marker`'s credits its refunds now entitle us
/// to (`credits × amount_refunded / whole_cents`, rounded down), less what
/// refunds and the dispute already took or wrote off; what is not available
/// is written off as unrecovered. `refunded_before_cents` is the
/// cumulative refund the previous entry saw (for the entry's cents).
fn take_refund_share(
    wallet: &mut Wallet,
    marker: &mut CreditedPayment,
    whole_cents: i64,
    refunded_before_cents: i64,
) -> Option<LedgerEntry> {
    let refunded = marker.reconciliation.amount_refunded_cents;
    let target = share_of(marker.credits, refunded, whole_cents);
    let due = target.saturating_sub(marker.credits_settled_back());
    if !due.is_positive() {
        return None;
    }
    let entry = wallet.reverse_credits(EntryKind::RefundReversal, due);
    let taken = entry.as_ref().map_or(Credits::ZERO, |e| e.amount);
    let r = &mut marker.reconciliation;
    r.credits_refunded = Credits::from_units(r.credits_refunded.units() + taken.units());
    r.credits_unrecovered =
        Credits::from_units(r.credits_unrecovered.units() + due.units() - taken.units());
    debug_assert!(marker.credits_settled_back() <= marker.credits);
    entry.map(|mut e| {
        e.pack_id = marker.pack_id.clone();
        e.payment_intent_id = Some(marker.payment_intent_id.clone());
        e.purchase_id = marker.purchase_id.clone();
        e.amount_cents = Some(refunded - refunded_before_cents);
        e.currency = Some("usd".to_string());
        e
    })
}

/// `charge.refunded` for a PaymentIntent: Stripe's cumulative refunded
/// amount is applied once (an older or repeated delivery changes nothing).
/// Credits were not credited yet: the marker remembers the refund, and the
/// credit takes it back when it comes.
pub fn refund(
    wallet: &mut Wallet,
    purchase: Option<Purchase>,
    payment: Option<CreditedPayment>,
    refund: &ChargeRefund,
) -> Settlement {
    let now = wallet.now();
    let mut settlement = Settlement {
        purchase,
        ..Settlement::default()
    };
    let Some(payment_intent_id) = refund.payment_intent_id.as_deref() else {
        return settlement;
    };
    // Neither credited nor a purchase of ours: not our payment, nothing to do.
    let Some(mut marker) = payment.or_else(|| {
        let purchase = settlement.purchase.as_ref()?;
        Some(CreditedPayment::before_credit(
            payment_intent_id,
            Some(purchase),
        ))
    }) else {
        return settlement;
    };
    let before_cents = marker.reconciliation.amount_refunded_cents;
    if refund.amount_refunded_cents <= before_cents {
        return settlement;
    }
    marker.reconciliation.amount_refunded_cents = refund.amount_refunded_cents;
    if marker.entry_id.is_some() {
        let whole = refund.amount_cents.max(marker.amount_received_cents);
        settlement
            .entries
            .extend(take_refund_share(wallet, &mut marker, whole, before_cents));
    }
    settled(settlement, marker, now)
}

/// `charge.dispute.created` for a PaymentIntent: the purchase becomes
/// disputed and the still-unspent part of its credits is taken back (at most
/// what is available, so the balance never goes negative and holds stay
/// covered; never what refunds already took). Spent credits stay spent. A
/// dispute that arrives before the payment was credited leaves a marker, so
/// that payment is never credited. Repeats change nothing.
pub fn dispute(
    wallet: &mut Wallet,
    purchase: Option<Purchase>,
    payment: Option<CreditedPayment>,
    payment_intent_id: &str,
) -> Settlement {
    let now = wallet.now();
    let mut settlement = Settlement {
        purchase,
        ..Settlement::default()
    };
    let mut marker = match (payment, settlement.purchase.as_ref()) {
        (Some(marker), _) if marker.disputed => return settlement,
        (Some(marker), _) => marker,
        (None, Some(purchase)) => CreditedPayment::before_credit(payment_intent_id, Some(purchase)),
        // Neither credited nor a purchase of ours: not our payment.
        (None, None) => return settlement,
    };
    let unsettled = marker.credits.saturating_sub(marker.credits_settled_back());
    if let Some(mut entry) = wallet.reverse_credits(EntryKind::DisputeReversal, unsettled) {
        entry.pack_id = marker.pack_id.clone();
        entry.payment_intent_id = Some(marker.payment_intent_id.clone());
        entry.purchase_id = marker.purchase_id.clone();
        marker.credits_reversed =
            Credits::from_units(marker.credits_reversed.units() + entry.amount.units());
        settlement.entries.push(entry);
    }
    marker.disputed = true;
    marker.reconciliation.dispute_status = Some(DisputeStatus::Open);
    if let Some(p) = settlement.purchase.as_mut() {
        p.status = PurchaseStatus::Disputed;
    }
    settlement = settled(settlement, marker, now);
    settlement.purchase_changed |= settlement.purchase.is_some();
    settlement
}

/// `charge.dispute.closed`: won gives back exactly what the dispute took
/// (one reinstatement entry); lost or otherwise closed takes nothing more.
/// Only an open dispute closes, so repeats change nothing.
pub fn close_dispute(
    wallet: &mut Wallet,
    purchase: Option<Purchase>,
    payment: Option<CreditedPayment>,
    outcome: &DisputeOutcome,
) -> Result<Settlement, Rejection> {
    let now = wallet.now();
    let settlement = Settlement {
        purchase,
        ..Settlement::default()
    };
    let Some(mut marker) = payment else {
        return Ok(settlement);
    };
    // Markers written before reconciliation existed record only `disputed`.
    let open = marker.disputed
        && matches!(
            marker.reconciliation.dispute_status,
            None | Some(DisputeStatus::Open)
        );
    if !open {
        return Ok(settlement);
    }
    let mut entries = Vec::new();
    let status = match outcome {
        DisputeOutcome::Won => {
            let owed = marker
                .credits_reversed
                .saturating_sub(marker.reconciliation.credits_reinstated);
            if owed.is_positive() {
                let mut entry = wallet.reinstate_credits(owed)?;
                entry.pack_id = marker.pack_id.clone();
                entry.payment_intent_id = Some(marker.payment_intent_id.clone());
                entry.purchase_id = marker.purchase_id.clone();
                marker.reconciliation.credits_reinstated = marker.credits_reversed;
                entries.push(entry);
            }
            DisputeStatus::Won
        }
        DisputeOutcome::Lost => DisputeStatus::Lost,
        DisputeOutcome::Other => DisputeStatus::Closed,
    };
    marker.reconciliation.dispute_status = Some(status);
    let mut settlement = settled(settlement, marker, now);
    settlement.entries = entries;
    Ok(settlement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WalletConfig;
    use crate::wallet::{DebitRequest, EntryKind, HoldRequest};

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn setup() -> (Wallet, WalletConfig, Vec<LedgerEntry>) {
        let config = WalletConfig::defaults();
        let (wallet, grant) =
            Wallet::open("org_1", "owner", None, &config, at("2030-01-01T10:00:00Z"));
        (wallet, config, grant.into_iter().collect())
    }

    fn team_purchase(config: &WalletConfig) -> Purchase {
        Purchase::open(
            &purchase_id("org_1", "key-1"),
            config.pack("team").unwrap(),
            "key-1",
            "fp",
            "pm_1",
            at("2030-01-01T10:00:00Z"),
        )
    }

    const CUSTOMER: &str = "cus_1";

    fn intent(status: &str, received: Option<i64>) -> IntentState {
        IntentState {
            id: "pi_1".into(),
            status: IntentStatus::parse(status),
            amount_cents: 5000,
            amount_received_cents: received,
            currency: "usd".into(),
            client_secret: Some("pi_1_secret_x".into()),
            decline_code: None,
            customer: Some(CUSTOMER.into()),
            org_id: Some("org_1".into()),
            pack_id: Some("team".into()),
            purchase_id: Some(purchase_id("org_1", "key-1")),
        }
    }

    fn outcome(status: &str, received: Option<i64>) -> ChargeOutcome {
        ChargeOutcome::Intent {
            intent: intent(status, received),
        }
    }

    /// balance == sum of the ledger, and every balance_after is the running sum.
    fn assert_ledger(wallet: &Wallet, entries: &[LedgerEntry]) {
        let mut running = 0;
        for entry in entries {
            running += entry.signed_amount();
            assert_eq!(entry.balance_after.units(), running, "{entry:?}");
        }
        assert_eq!(wallet.balance.units(), running);
        assert!(wallet.available().units() >= 0 && wallet.balance >= wallet.held);
    }

    #[test]
    fn purchase_ids_are_derived_from_org_and_key() {
        let id = purchase_id("org_1", "key-1");
        assert!(is_purchase_id(&id), "{id}");
        assert_eq!(id, purchase_id("org_1", "key-1"));
        assert_ne!(id, purchase_id("org_2", "key-1"));
        assert_ne!(id, purchase_id("org_1", "key-2"));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(purchase_id("a", "bc"), purchase_id("ab", "c"));
        assert_eq!(
            charge_idempotency_key(&id),
            format!("ai-wallet-charge-{id}")
        );
        assert!(customer_idempotency_key("org_1").len() <= 255);
        for bad in ["pur_", "pur_XYZ", "le_000000000001", &format!("{id}0")] {
            assert!(!is_purchase_id(bad), "{bad}");
        }
    }

    #[test]
    fn payment_intent_statuses_map_onto_purchases() {
        let cases = [
            ("succeeded", PurchaseStatus::Succeeded),
            ("processing", PurchaseStatus::Processing),
            ("requires_capture", PurchaseStatus::Processing),
            ("requires_action", PurchaseStatus::RequiresAction),
            ("requires_confirmation", PurchaseStatus::RequiresAction),
            ("requires_payment_method", PurchaseStatus::Failed),
            ("canceled", PurchaseStatus::Failed),
            ("a_status_from_the_future", PurchaseStatus::Processing),
        ];
        for (stripe, ours) in cases {
            assert_eq!(
                PurchaseStatus::of_intent(&IntentStatus::parse(stripe)),
                ours,
                "{stripe}"
            );
        }
    }

    #[test]
    fn credits_come_from_the_pack_and_what_was_received() {
        let pack = c("5250");
        // (price, received, currency, credits or refusal)
        type Case = (
            i64,
            Option<i64>,
            &'static str,
            Result<&'static str, CreditRefusal>,
        );
        let cases: &[Case] = &[
            (5000, Some(5000), "usd", Ok("5250")),
            (5000, Some(9999), "usd", Ok("5250")), // an excess buys nothing extra
            (5000, Some(2500), "usd", Ok("2625")),
            (5000, Some(1), "usd", Ok("1.05")),
            (3, Some(1), "usd", Ok("1750")),
            (5000, Some(0), "usd", Err(CreditRefusal::NothingReceived)),
            (5000, None, "usd", Err(CreditRefusal::AmountUnknown)),
            (5000, Some(5000), "eur", Err(CreditRefusal::WrongCurrency)),
        ];
        for (price, received, currency, expected) in cases {
            let got = credits_for_payment(pack, *price, *received, currency);
            assert_eq!(got, expected.map(c), "{price} {received:?} {currency}");
        }
        // Truncated toward zero, never rounded up.
        assert_eq!(
            credits_for_payment(c("1000"), 3, Some(1), "usd"),
            Ok(c("333.3333"))
        );
        assert_eq!(
            credits_for_payment(c("0.0001"), 1000, Some(1), "usd"),
            Err(CreditRefusal::NothingReceived)
        );
    }

    #[test]
    fn replays_find_the_purchase_and_resend_only_when_safe() {
        let (_, config, _) = setup();
        let now = at("2030-01-01T10:00:00Z");
        assert_eq!(start(None, "key-1", "fp", "team", now), Start::New);
        let purchase = team_purchase(&config);
        assert_eq!(
            start(Some(purchase.clone()), "key-1", "other", "team", now),
            Start::KeyReused
        );
        // In flight: a concurrent replay does not send a second charge.
        let replay = start(Some(purchase.clone()), "key-1", "fp", "team", now);
        assert!(matches!(
            replay,
            Start::Existing {
                send_charge: false,
                changed: false,
                ..
            }
        ));
        // The first sender vanished: after the lease, a replay resends (same Stripe key).
        let later = now + Duration::seconds(CHARGE_LEASE_SECONDS);
        match start(Some(purchase.clone()), "key-1", "fp", "team", later) {
            Start::Existing {
                purchase,
                send_charge: true,
                changed: true,
            } => assert_eq!(purchase.charge_started_at, Some(later)),
            other => panic!("{other:?}"),
        }
        // Past Stripe's idempotency window a resend could charge twice: never.
        let too_late = now + Duration::seconds(RESEND_WINDOW_SECONDS);
        assert!(matches!(
            start(Some(purchase.clone()), "key-1", "fp", "team", too_late),
            Start::Existing {
                send_charge: false,
                ..
            }
        ));
        // Once Stripe answered, a replay only reports.
        let mut answered = purchase;
        answered.payment_intent_id = Some("pi_1".into());
        answered.charge_started_at = None;
        assert!(matches!(
            start(Some(answered), "key-1", "fp", "team", later),
            Start::Existing {
                send_charge: false,
                ..
            }
        ));
    }

    #[test]
    fn a_synchronous_success_credits_once_whatever_arrives_later() {
        let (mut wallet, config, mut ledger) = setup();
        let purchase = team_purchase(&config);
        let first = settle(
            &mut wallet,
            Some(purchase),
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        let entry = first.entries[0].clone();
        assert_eq!(
            (
                entry.kind,
                entry.amount,
                entry.balance_after,
                entry.amount_cents
            ),
            (EntryKind::Purchase, c("5250"), c("5450"), Some(5000))
        );
        assert_eq!(entry.payment_intent_id.as_deref(), Some("pi_1"));
        ledger.push(entry);
        let purchase = first.purchase.unwrap();
        assert_eq!(purchase.status, PurchaseStatus::Succeeded);
        assert_eq!(purchase.credits_granted, c("5250"));
        let marker = first.payment.unwrap();
        // The webhook (any number of times) and a refresh find the marker.
        for _ in 0..3 {
            let again = settle(
                &mut wallet,
                Some(purchase.clone()),
                Some(&marker),
                &outcome("succeeded", Some(5000)),
                Some(CUSTOMER),
            )
            .unwrap();
            assert_eq!(
                (again.entries.len(), again.payment, again.purchase_changed),
                (0, None, false)
            );
        }
        assert_ledger(&wallet, &ledger);
    }

    #[test]
    fn a_webhook_before_the_purchase_answer_credits_and_the_answer_does_not() {
        let (mut wallet, config, mut ledger) = setup();
        let purchase = team_purchase(&config);
        let webhook = settle(
            &mut wallet,
            Some(purchase),
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        ledger.extend(webhook.entries);
        let sync = settle(
            &mut wallet,
            webhook.purchase,
            webhook.payment.as_ref(),
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        assert!(sync.entries.is_empty());
        assert_eq!(wallet.balance, c("5450"));
        assert_ledger(&wallet, &ledger);
    }

    #[test]
    fn only_a_purchase_of_ours_charged_to_our_customer_credits() {
        let (mut wallet, config, _) = setup();
        // Metadata naming the organization and a pack, but no purchase of ours.
        let stray = settle(
            &mut wallet,
            None,
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        assert_eq!(stray.refusal, Some(CreditRefusal::NotOurPurchase));
        assert_eq!(
            (stray.entries.len(), stray.payment, stray.purchase),
            (0, None, None)
        );
        // Our purchase, but another customer paid (or none is on record).
        let mut foreign = intent("succeeded", Some(5000));
        foreign.customer = Some("cus_other".into());
        for (paid_by, ours) in [
            (foreign, Some(CUSTOMER)),
            (intent("succeeded", Some(5000)), None),
        ] {
            let refused = settle(
                &mut wallet,
                Some(team_purchase(&config)),
                None,
                &ChargeOutcome::Intent { intent: paid_by },
                ours,
            )
            .unwrap();
            assert_eq!(refused.refusal, Some(CreditRefusal::CustomerMismatch));
            assert!(refused.entries.is_empty() && refused.payment.is_none());
            // A stranger's PaymentIntent never binds our purchase.
            assert!(!refused.purchase_changed);
            assert_eq!(refused.purchase.unwrap(), team_purchase(&config));
        }
        assert_eq!(wallet.balance, c("200"));
        // The genuine answer still credits afterwards: a refusal leaves no marker.
        let paid = settle(
            &mut wallet,
            Some(team_purchase(&config)),
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        assert_eq!(paid.entries.len(), 1);
        assert_eq!(wallet.balance, c("5450"));
    }

    #[test]
    fn declines_fail_the_purchase_and_never_undo_a_success() {
        let (mut wallet, config, _) = setup();
        let purchase = team_purchase(&config);
        let declined = settle(
            &mut wallet,
            Some(purchase.clone()),
            None,
            &ChargeOutcome::Refused {
                payment_intent_id: Some("pi_1".into()),
                decline_code: Some("insufficient_funds".into()),
            },
            Some(CUSTOMER),
        )
        .unwrap();
        let failed = declined.purchase.unwrap();
        assert_eq!(failed.status, PurchaseStatus::Failed);
        assert_eq!(failed.to_json(true)["decline_code"], "insufficient_funds");
        assert_eq!(wallet.balance, c("200"));

        let paid = settle(
            &mut wallet,
            Some(purchase),
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        let late_failure = settle(
            &mut wallet,
            paid.purchase,
            paid.payment.as_ref(),
            &outcome("requires_payment_method", None),
            Some(CUSTOMER),
        )
        .unwrap();
        assert_eq!(
            late_failure.purchase.unwrap().status,
            PurchaseStatus::Succeeded
        );
    }

    #[test]
    fn requires_action_shows_the_secret_to_the_owner_only() {
        let (mut wallet, config, _) = setup();
        let settled = settle(
            &mut wallet,
            Some(team_purchase(&config)),
            None,
            &outcome("requires_action", None),
            Some(CUSTOMER),
        )
        .unwrap();
        let purchase = settled.purchase.unwrap();
        assert_eq!(purchase.status, PurchaseStatus::RequiresAction);
        assert_eq!(purchase.to_json(true)["client_secret"], "pi_1_secret_x");
        assert!(purchase.to_json(false).get("client_secret").is_none());
        // Once paid, the secret is dropped.
        let paid = settle(
            &mut wallet,
            Some(purchase),
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        assert_eq!(paid.purchase.unwrap().client_secret, None);
    }

    #[test]
    fn an_unknown_outcome_releases_the_charge_for_a_replay() {
        let (mut wallet, config, _) = setup();
        let settled = settle(
            &mut wallet,
            Some(team_purchase(&config)),
            None,
            &ChargeOutcome::Unknown,
            Some(CUSTOMER),
        )
        .unwrap();
        let purchase = settled.purchase.unwrap();
        assert_eq!(purchase.status, PurchaseStatus::Processing);
        assert!(purchase.needs_charge(wallet.now()));
    }

    #[test]
    fn a_dispute_takes_back_only_unspent_available_credits() {
        // (credits spent before the dispute, held, expected reversal, balance after)
        let cases = [
            ("0", "0", "5250", "200"),
            ("5000", "0", "450", "0"),
            ("5300", "0", "150", "0"),
            ("5000", "100", "350", "100"),
            ("0", "5450", "0", "5450"),
        ];
        for (spent, held, reversed, balance) in cases {
            let (mut wallet, mut config, mut ledger) = setup();
            config.max_operation = c("100000");
            config.daily_cap_max = c("100000");
            wallet.set_daily_cap(c("100000"), &config).unwrap();
            let paid = settle(
                &mut wallet,
                Some(team_purchase(&config)),
                None,
                &outcome("succeeded", Some(5000)),
                Some(CUSTOMER),
            )
            .unwrap();
            ledger.extend(paid.entries.clone());
            if c(spent).is_positive() {
                let debit = DebitRequest {
                    feature: "chat".into(),
                    amount: c(spent),
                    user_id: None,
                    project_id: None,
                    metadata: None,
                };
                ledger.push(wallet.debit(&debit, &config).unwrap());
            }
            if c(held).is_positive() {
                let hold = HoldRequest {
                    feature: "chat".into(),
                    amount: c(held),
                    user_id: None,
                    project_id: None,
                    ttl_seconds: 60,
                };
                wallet.place_hold(&hold, &config).unwrap();
            }
            let spent_today = wallet.spent_today;
            let disputed = dispute(&mut wallet, paid.purchase, paid.payment, "pi_1");
            let marker = disputed.payment.clone().unwrap();
            assert!(marker.disputed);
            assert_eq!(marker.credits_reversed, c(reversed), "spent {spent}");
            let purchase = disputed.purchase.clone().unwrap();
            assert_eq!(purchase.status, PurchaseStatus::Disputed);
            assert_eq!(purchase.to_json(false)["credits_reversed"], reversed);
            match disputed.entries.first() {
                Some(entry) => {
                    assert_eq!(entry.kind, EntryKind::DisputeReversal);
                    assert_eq!(entry.amount, c(reversed));
                    assert_eq!(entry.pack_id.as_deref(), Some("team"));
                    ledger.push(entry.clone());
                }
                None => assert_eq!(c(reversed), Credits::ZERO),
            }
            assert_eq!(wallet.balance, c(balance), "spent {spent}");
            assert_eq!(wallet.spent_today, spent_today, "not usage");
            assert_ledger(&wallet, &ledger);
            // Stripe retries the event: nothing more happens.
            let again = dispute(&mut wallet, disputed.purchase, Some(marker), "pi_1");
            assert_eq!((again.entries.len(), again.payment), (0, None));
            assert_eq!(wallet.balance, c(balance));
        }
    }

    #[test]
    fn a_dispute_before_the_credit_blocks_it() {
        let (mut wallet, config, _) = setup();
        let disputed = dispute(&mut wallet, Some(team_purchase(&config)), None, "pi_1");
        assert!(disputed.entries.is_empty());
        let marker = disputed.payment.unwrap();
        let late = settle(
            &mut wallet,
            disputed.purchase,
            Some(&marker),
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        assert!(late.entries.is_empty());
        assert_eq!(late.purchase.unwrap().status, PurchaseStatus::Disputed);
        assert_eq!(wallet.balance, c("200"));
    }

    fn charge_refund(refunded_cents: i64) -> ChargeRefund {
        ChargeRefund {
            charge_id: "ch_1".into(),
            payment_intent_id: Some("pi_1".into()),
            amount_cents: 5000,
            amount_refunded_cents: refunded_cents,
            currency: "usd".into(),
        }
    }

    fn spend(wallet: &mut Wallet, config: &WalletConfig, amount: &str) -> LedgerEntry {
        let debit = DebitRequest {
            feature: "chat".into(),
            amount: c(amount),
            user_id: None,
            project_id: None,
            metadata: None,
        };
        wallet.debit(&debit, config).unwrap()
    }

    /// A paid team purchase (5,250 credits for $50) on a wallet with the
    /// 200-credit trial and room to spend it all today.
    fn paid_team() -> (Wallet, WalletConfig, Vec<LedgerEntry>, Settlement) {
        let (mut wallet, mut config, mut ledger) = setup();
        config.max_operation = c("100000");
        config.daily_cap_max = c("100000");
        wallet.set_daily_cap(c("100000"), &config).unwrap();
        let paid = settle(
            &mut wallet,
            Some(team_purchase(&config)),
            None,
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        ledger.extend(paid.entries.clone());
        (wallet, config, ledger, paid)
    }

    #[test]
    fn refunds_take_back_their_share_once_never_below_zero() {
        let (mut wallet, config, mut ledger, paid) = paid_team();
        ledger.push(spend(&mut wallet, &config, "4000"));
        // balance 1,450. Half refunded: 2,625 due, 1,450 available.
        let half = refund(
            &mut wallet,
            paid.purchase,
            paid.payment,
            &charge_refund(2500),
        );
        let entry = half.entries[0].clone();
        assert_eq!(
            (
                entry.kind,
                entry.amount,
                entry.balance_after,
                entry.amount_cents
            ),
            (EntryKind::RefundReversal, c("1450"), c("0"), Some(2500))
        );
        ledger.push(entry);
        let marker = half.payment.clone().unwrap();
        assert_eq!(marker.reconciliation.credits_refunded, c("1450"));
        assert_eq!(marker.reconciliation.credits_unrecovered, c("1175"));
        let purchase = half.purchase.clone().unwrap();
        assert_eq!(purchase.to_json(false)["credits_unrecovered"], "1175");
        assert_eq!(purchase.to_json(false)["amount_refunded_cents"], 2500);
        // The same delivery again, or an older one: nothing.
        for cents in [2500, 1000] {
            let again = refund(
                &mut wallet,
                half.purchase.clone(),
                Some(marker.clone()),
                &charge_refund(cents),
            );
            assert_eq!((again.entries.len(), again.payment), (0, None));
        }
        // The rest is refunded after a new purchase refilled the wallet.
        let refill = wallet
            .credit_purchase(&PurchaseCredit {
                source: PurchaseSource::Owner,
                pack_id: "starter".into(),
                credits: c("1000"),
                amount_cents: 1000,
                currency: "usd".into(),
                payment_intent_id: "pi_2".into(),
                purchase_id: None,
            })
            .unwrap();
        ledger.push(refill);
        let rest = refund(
            &mut wallet,
            half.purchase,
            Some(marker),
            &charge_refund(5000),
        );
        let entry = rest.entries[0].clone();
        assert_eq!((entry.amount, entry.amount_cents), (c("1000"), Some(2500)));
        ledger.push(entry);
        let marker = rest.payment.unwrap();
        assert_eq!(marker.reconciliation.credits_refunded, c("2450"));
        assert_eq!(marker.reconciliation.credits_unrecovered, c("2800"));
        assert_eq!(marker.credits_settled_back(), marker.credits);
        assert_eq!(wallet.balance, Credits::ZERO);
        assert_ledger(&wallet, &ledger);
    }

    #[test]
    fn a_refund_rounds_down_to_the_unit_and_counts_the_dispute() {
        let (mut wallet, _, mut ledger, paid) = paid_team();
        // 5,250 × 1 / 5,000 = 1.05 credits.
        let cent = refund(&mut wallet, paid.purchase, paid.payment, &charge_refund(1));
        assert_eq!(cent.entries[0].amount, c("1.05"));
        ledger.extend(cent.entries.clone());
        // 5,250 × 3 / 5,000 = 3.15 in all: 2.1 more.
        let three = refund(&mut wallet, cent.purchase, cent.payment, &charge_refund(3));
        assert_eq!(three.entries[0].amount, c("2.1"));
        ledger.extend(three.entries.clone());
        // A dispute takes what is left unsettled, a later full refund nothing more.
        let disputed = dispute(&mut wallet, three.purchase, three.payment, "pi_1");
        assert_eq!(disputed.entries[0].amount, c("5246.85"));
        ledger.extend(disputed.entries.clone());
        let full = refund(
            &mut wallet,
            disputed.purchase,
            disputed.payment,
            &charge_refund(5000),
        );
        assert!(full.entries.is_empty());
        assert_eq!(wallet.balance, c("200"));
        assert_ledger(&wallet, &ledger);
    }

    #[test]
    fn a_won_dispute_gives_back_exactly_what_it_took_once() {
        let (mut wallet, config, mut ledger, paid) = paid_team();
        ledger.push(spend(&mut wallet, &config, "250"));
        let balance_before = wallet.balance;
        let disputed = dispute(&mut wallet, paid.purchase, paid.payment, "pi_1");
        ledger.extend(disputed.entries.clone());
        let marker = disputed.payment.clone().unwrap();
        assert_eq!(marker.credits_reversed, c("5200"));
        assert_eq!(
            marker.reconciliation.dispute_status,
            Some(DisputeStatus::Open)
        );
        let won = close_dispute(
            &mut wallet,
            disputed.purchase.clone(),
            Some(marker.clone()),
            &DisputeOutcome::Won,
        )
        .unwrap();
        let entry = won.entries[0].clone();
        assert_eq!(
            (entry.kind, entry.amount),
            (EntryKind::DisputeReinstatement, c("5200"))
        );
        ledger.push(entry);
        assert_eq!(wallet.balance, balance_before);
        let closed = won.payment.clone().unwrap();
        assert_eq!(
            closed.reconciliation.dispute_status,
            Some(DisputeStatus::Won)
        );
        assert_eq!(closed.credits_settled_back(), Credits::ZERO);
        assert_eq!(
            won.purchase.unwrap().to_json(false)["dispute_status"],
            "won"
        );
        // Repeated, or a late "lost": nothing more.
        for outcome in [DisputeOutcome::Won, DisputeOutcome::Lost] {
            let again = close_dispute(&mut wallet, None, Some(closed.clone()), &outcome).unwrap();
            assert!(again.entries.is_empty() && again.payment.is_none());
        }
        assert_ledger(&wallet, &ledger);
        // A lost dispute takes nothing more.
        let (mut wallet, _, _, paid) = paid_team();
        let disputed = dispute(&mut wallet, paid.purchase, paid.payment, "pi_1");
        let after_dispute = wallet.balance;
        let lost =
            close_dispute(&mut wallet, None, disputed.payment, &DisputeOutcome::Lost).unwrap();
        assert!(lost.entries.is_empty());
        assert_eq!(
            lost.payment.unwrap().reconciliation.dispute_status,
            Some(DisputeStatus::Lost)
        );
        assert_eq!(wallet.balance, after_dispute);
    }

    #[test]
    fn refunds_and_disputes_of_payments_not_ours_change_nothing() {
        let (mut wallet, _, _) = setup();
        let mut stranger = charge_refund(5000);
        stranger.payment_intent_id = Some("pi_stranger".into());
        let refunded = refund(&mut wallet, None, None, &stranger);
        let disputed = dispute(&mut wallet, None, None, "pi_stranger");
        let closed = close_dispute(&mut wallet, None, None, &DisputeOutcome::Won).unwrap();
        for s in [refunded, disputed, closed] {
            assert!(s.entries.is_empty() && s.payment.is_none() && s.purchase.is_none());
        }
        assert_eq!(wallet.balance, c("200"));
    }

    #[test]
    fn a_refund_before_the_credit_is_taken_back_with_it() {
        let (mut wallet, config, _) = setup();
        let early = refund(
            &mut wallet,
            Some(team_purchase(&config)),
            None,
            &charge_refund(2500),
        );
        assert!(early.entries.is_empty());
        let marker = early.payment.unwrap();
        let paid = settle(
            &mut wallet,
            early.purchase,
            Some(&marker),
            &outcome("succeeded", Some(5000)),
            Some(CUSTOMER),
        )
        .unwrap();
        let kinds: Vec<_> = paid.entries.iter().map(|e| (e.kind, e.amount)).collect();
        assert_eq!(
            kinds,
            [
                (EntryKind::Purchase, c("5250")),
                (EntryKind::RefundReversal, c("2625"))
            ]
        );
        assert_eq!(wallet.balance, c("2825"));
    }

    #[test]
    fn only_an_auto_top_up_never_sent_is_canceled() {
        let (_, config, _) = setup();
        let now = at("2030-01-01T10:00:00Z");
        let pack = config.pack("starter").unwrap();
        let mut unsent = Purchase::auto_top_up("pur_a", "auto-top-up/2030-01/1", pack, now);
        assert!(unsent.cancel_unsent(now));
        assert_eq!(unsent.status, PurchaseStatus::Canceled);
        assert!(!unsent.needs_auto_charge(now));
        let mut sent = Purchase::auto_top_up("pur_b", "auto-top-up/2030-01/2", pack, now);
        sent.payment_method_id = Some("pm_1".into());
        assert!(
            !sent.cancel_unsent(now),
            "a sent charge is followed, not canceled"
        );
        assert!(
            !team_purchase(&config).cancel_unsent(now),
            "owner purchases are never"
        );
    }
}
