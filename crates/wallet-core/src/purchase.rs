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

use crate::config::{Pack, WalletConfig};
use crate::money::Credits;
use crate::stripe::{IntentState, IntentStatus};
use crate::time::rfc3339;
use crate::wallet::{LedgerEntry, PurchaseCredit, PurchaseSource, Rejection, Wallet};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Stripe keeps an idempotency key for at least 24 hours. A purchase whose
/// charge request got no answer is sent again (same key) only within this
/// window, so a resend can only ever return the first charge, never make a
/// second one.
pub const RESEND_WINDOW_SECONDS: i64 = 23 * 3600;
/// While one request's charge call is in flight, a concurrent replay of the
/// same purchase does not send another (longer than the Stripe call's timeouts).
pub const CHARGE_LEASE_SECONDS: i64 = 90;
/// Hex digits of a purchase id after `pur_` (96 bits).
const PURCHASE_ID_HEX: usize = 24;

fn digest_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// The purchase made with `idempotency_key` in `org_id`: derived, so a retry
/// names the same purchase before anything is stored.
pub fn purchase_id(org_id: &str, idempotency_key: &str) -> String {
    let digest = digest_hex(&["ai-wallet purchase", org_id, idempotency_key]);
    format!("pur_{}", &digest[..PURCHASE_ID_HEX])
}

/// The purchase auto top-up starts as the `ordinal`-th of `month` in
/// `org_id`. Its own namespace: no owner's Idempotency-Key can name it.
pub fn auto_top_up_purchase_id(org_id: &str, month: &str, ordinal: u32) -> String {
    let digest = digest_hex(&["ai-wallet auto top-up", org_id, month, &ordinal.to_string()]);
    format!("pur_{}", &digest[..PURCHASE_ID_HEX])
}

/// The fingerprint an auto top-up purchase records in place of a request's.
pub const AUTO_TOP_UP_FINGERPRINT: &str = "auto_top_up";

pub fn is_purchase_id(text: &str) -> bool {
    text.strip_prefix("pur_").is_some_and(|hex| {
        hex.len() == PURCHASE_ID_HEX
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Stripe `Idempotency-Key` of a purchase's charge: a retried purchase
/// resends the same key, so Stripe answers with the first PaymentIntent.
pub fn charge_idempotency_key(purchase_id: &str) -> String {
    format!("ai-wallet-charge-{purchase_id}")
}

/// Stripe `Idempotency-Key` for creating an organization's customer.
pub fn customer_idempotency_key(org_id: &str) -> String {
    let digest = digest_hex(&["ai-wallet customer", org_id]);
    format!("ai-wallet-customer-{}", &digest[..32])
}

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
}

impl PurchaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseStatus::Processing => "processing",
            PurchaseStatus::RequiresAction => "requires_action",
            PurchaseStatus::Succeeded => "succeeded",
            PurchaseStatus::Failed => "failed",
            PurchaseStatus::Disputed => "disputed",
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

    /// Whether auto top-up must send this purchase's charge at `now`: no
    /// answer from Stripe is recorded, no send is under way, and Stripe still
    /// remembers the idempotency key of an earlier send.
    pub fn needs_auto_charge(&self, now: DateTime<Utc>) -> bool {
        self.source == PurchaseSource::AutoTopUp
            && self.status == PurchaseStatus::Processing
            && self.payment_intent_id.is_none()
            && now - self.created_at < Duration::seconds(RESEND_WINDOW_SECONDS)
            && self
                .charge_started_at
                .is_none_or(|at| now - at >= Duration::seconds(CHARGE_LEASE_SECONDS))
    }

    /// Whether a replay at `now` must send the charge request again: Stripe's
    /// answer was never recorded, no other request is sending it, and Stripe
    /// still remembers the idempotency key.
    pub fn needs_charge(&self, now: DateTime<Utc>) -> bool {
        self.status == PurchaseStatus::Processing
            && self.payment_intent_id.is_none()
            && self.payment_method_id.is_some()
            && now - self.created_at < Duration::seconds(RESEND_WINDOW_SECONDS)
            && self
                .charge_started_at
                .is_none_or(|at| now - at >= Duration::seconds(CHARGE_LEASE_SECONDS))
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
        out
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

/// Why a succeeded payment was not credited. Cannot happen for a
/// PaymentIntent this service created; logged for a person to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditRefusal {
    /// Not in usd, the only currency packs are priced in.
    WrongCurrency,
    /// Stripe reports nothing (or too little to buy 0.0001 credit) received.
    NothingReceived,
    /// The payload does not say what was received.
    AmountUnknown,
    /// Neither a purchase record nor the catalogue knows the pack.
    UnknownPack,
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
    // Both factors are far inside i64 (credits < 2^53 units, cents < 10^8).
    let units = (pack_credits.units() as i128 * received as i128) / price_cents as i128;
    let credits = Credits::from_units(units as i64);
    if credits.is_positive() {
        Ok(credits)
    } else {
        Err(CreditRefusal::NothingReceived)
    }
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
    pub credits_reversed: Credits,
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
    pub entry: Option<LedgerEntry>,
    pub refusal: Option<CreditRefusal>,
}

/// Applies a charge outcome to the wallet and purchase. `purchase` is the
/// record the outcome is about (if there is one); `payment` the marker of the
/// outcome's PaymentIntent (if one exists).
pub fn settle(
    wallet: &mut Wallet,
    purchase: Option<Purchase>,
    payment: Option<&CreditedPayment>,
    outcome: &ChargeOutcome,
    config: &WalletConfig,
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
                if !p.status.is_paid() {
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
            let mut marker = payment.cloned();
            if intent.status == IntentStatus::Succeeded && marker.is_none() {
                match credit(wallet, settlement.purchase.as_ref(), intent, config)? {
                    Ok((entry, new_marker)) => {
                        settlement.entry = Some(entry);
                        settlement.payment = Some(new_marker.clone());
                        marker = Some(new_marker);
                    }
                    Err(refusal) => settlement.refusal = Some(refusal),
                }
            }
            if settlement.purchase.is_none() && settlement.entry.is_some() {
                settlement.purchase = adopt(intent, marker.as_ref(), now);
                settlement.purchase_changed = settlement.purchase.is_some();
            }
            if let Some(p) = settlement.purchase.as_mut() {
                settlement.purchase_changed |= follow_intent(p, intent, marker.as_ref(), now);
            }
        }
    }
    Ok(settlement)
}

/// A credit's entry and marker, or why there is none.
type Credited = Result<(LedgerEntry, CreditedPayment), CreditRefusal>;

/// Credits a succeeded PaymentIntent, valued from the purchase's snapshot of
/// its pack or, for a payment first seen in an event, from the catalogue.
fn credit(
    wallet: &mut Wallet,
    purchase: Option<&Purchase>,
    intent: &IntentState,
    config: &WalletConfig,
) -> Result<Credited, Rejection> {
    let basis = match purchase {
        Some(p) => Some((p.pack_id.clone(), p.credits, p.amount_cents)),
        None => intent
            .pack_id
            .as_deref()
            .and_then(|id| config.pack(id))
            .map(|pack| (pack.id.clone(), pack.credits, pack.price_cents)),
    };
    let Some((pack_id, pack_credits, price_cents)) = basis else {
        return Ok(Err(CreditRefusal::UnknownPack));
    };
    let credits = match credits_for_payment(
        pack_credits,
        price_cents,
        intent.amount_received_cents,
        &intent.currency,
    ) {
        Ok(credits) => credits,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let received = intent.amount_received_cents.unwrap_or_default();
    let purchase_id = purchase
        .map(|p| p.id.clone())
        .or_else(|| intent.purchase_id.clone().filter(|id| is_purchase_id(id)));
    let entry = wallet.credit_purchase(&PurchaseCredit {
        source: purchase.map_or(PurchaseSource::Owner, |p| p.source),
        pack_id: pack_id.clone(),
        credits,
        amount_cents: received,
        currency: intent.currency.clone(),
        payment_intent_id: intent.id.clone(),
        purchase_id: purchase_id.clone(),
    })?;
    let marker = CreditedPayment {
        payment_intent_id: intent.id.clone(),
        purchase_id,
        pack_id: Some(pack_id),
        credits,
        amount_received_cents: received,
        entry_id: Some(entry.id.clone()),
        entry_seq: Some(entry.seq),
        disputed: false,
        credits_reversed: Credits::ZERO,
    };
    Ok(Ok((entry, marker)))
}

/// A purchase record for a payment first seen in a Stripe event (its
/// metadata names our purchase id), so every credited payment has one.
fn adopt(
    intent: &IntentState,
    marker: Option<&CreditedPayment>,
    now: DateTime<Utc>,
) -> Option<Purchase> {
    let marker = marker?;
    let id = marker.purchase_id.clone()?;
    Some(Purchase {
        id,
        source: PurchaseSource::Owner,
        status: PurchaseStatus::Processing,
        pack_id: marker.pack_id.clone()?,
        credits: marker.credits,
        amount_cents: intent.amount_cents,
        currency: intent.currency.clone(),
        idempotency_key: None,
        fingerprint: None,
        payment_method_id: None,
        payment_intent_id: Some(intent.id.clone()),
        client_secret: None,
        decline_code: None,
        credits_granted: Credits::ZERO,
        entry_id: None,
        credits_reversed: Credits::ZERO,
        created_at: now,
        updated_at: now,
        charge_started_at: None,
    })
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
        purchase.credits_granted = m.credits;
        purchase.entry_id = m.entry_id.clone();
        if m.disputed {
            purchase.status = PurchaseStatus::Disputed;
            purchase.credits_reversed = m.credits_reversed;
            purchase.client_secret = None;
        }
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

/// `charge.dispute.created` for a PaymentIntent: the purchase becomes
/// disputed and the still-unspent part of its credits is taken back (at most
/// what is available, so the balance never goes negative and holds stay
/// covered). Spent credits stay spent. A dispute that arrives before the
/// payment was credited leaves a marker, so that payment is never credited.
/// Repeats change nothing.
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
    let marker = match payment {
        Some(marker) if marker.disputed => return settlement,
        Some(mut marker) => {
            let unreversed = marker.credits.saturating_sub(marker.credits_reversed);
            if let Some(mut entry) = wallet.reverse_credits(unreversed) {
                entry.pack_id = marker.pack_id.clone();
                entry.payment_intent_id = Some(marker.payment_intent_id.clone());
                entry.purchase_id = marker.purchase_id.clone();
                marker.credits_reversed = marker
                    .credits_reversed
                    .checked_add(entry.amount)
                    .unwrap_or(marker.credits);
                settlement.entry = Some(entry);
            }
            marker.disputed = true;
            marker
        }
        None => CreditedPayment {
            payment_intent_id: payment_intent_id.to_string(),
            purchase_id: settlement.purchase.as_ref().map(|p| p.id.clone()),
            pack_id: settlement.purchase.as_ref().map(|p| p.pack_id.clone()),
            credits: Credits::ZERO,
            amount_received_cents: 0,
            entry_id: None,
            entry_seq: None,
            disputed: true,
            credits_reversed: Credits::ZERO,
        },
    };
    if let Some(p) = settlement.purchase.as_mut() {
        p.status = PurchaseStatus::Disputed;
        p.credits_reversed = marker.credits_reversed;
        p.client_secret = None;
        p.charge_started_at = None;
        p.updated_at = now;
        settlement.purchase_changed = true;
    }
    settlement.payment = Some(marker);
    settlement
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn intent(status: &str, received: Option<i64>) -> IntentState {
        IntentState {
            id: "pi_1".into(),
            status: IntentStatus::parse(status),
            amount_cents: 5000,
            amount_received_cents: received,
            currency: "usd".into(),
            client_secret: Some("pi_1_secret_x".into()),
            decline_code: None,
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
            &config,
        )
        .unwrap();
        let entry = first.entry.clone().unwrap();
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
                &config,
            )
            .unwrap();
            assert_eq!(
                (again.entry, again.payment, again.purchase_changed),
                (None, None, false)
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
            &config,
        )
        .unwrap();
        ledger.extend(webhook.entry);
        let sync = settle(
            &mut wallet,
            webhook.purchase,
            webhook.payment.as_ref(),
            &outcome("succeeded", Some(5000)),
            &config,
        )
        .unwrap();
        assert!(sync.entry.is_none());
        assert_eq!(wallet.balance, c("5450"));
        assert_ledger(&wallet, &ledger);
    }

    #[test]
    fn a_payment_first_seen_in_an_event_is_credited_from_the_catalogue_and_adopted() {
        let (mut wallet, config, _) = setup();
        let settled = settle(
            &mut wallet,
            None,
            None,
            &outcome("succeeded", Some(5000)),
            &config,
        )
        .unwrap();
        let adopted = settled.purchase.unwrap();
        assert!(settled.purchase_changed);
        assert_eq!(
            (adopted.status, adopted.credits_granted, adopted.id.clone()),
            (
                PurchaseStatus::Succeeded,
                c("5250"),
                purchase_id("org_1", "key-1")
            )
        );
        // The request with that key later claims it without charging again.
        match start(Some(adopted), "key-1", "fp", "team", wallet.now()) {
            Start::Existing {
                purchase,
                send_charge: false,
                changed: true,
            } => assert_eq!(purchase.idempotency_key.as_deref(), Some("key-1")),
            other => panic!("{other:?}"),
        }
        // An unknown pack with no purchase record credits nothing.
        let mut unknown = intent("succeeded", Some(5000));
        unknown.id = "pi_2".into();
        unknown.pack_id = Some("mystery".into());
        let refused = settle(
            &mut wallet,
            None,
            None,
            &ChargeOutcome::Intent { intent: unknown },
            &config,
        )
        .unwrap();
        assert_eq!(refused.refusal, Some(CreditRefusal::UnknownPack));
        assert_eq!((refused.entry, refused.purchase), (None, None));
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
            &config,
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
            &config,
        )
        .unwrap();
        let late_failure = settle(
            &mut wallet,
            paid.purchase,
            paid.payment.as_ref(),
            &outcome("requires_payment_method", None),
            &config,
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
            &config,
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
            &config,
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
            &config,
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
                &config,
            )
            .unwrap();
            ledger.extend(paid.entry);
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
            match &disputed.entry {
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
            assert_eq!((again.entry, again.payment), (None, None));
            assert_eq!(wallet.balance, c(balance));
        }
    }

    #[test]
    fn a_dispute_before_the_credit_blocks_it() {
        let (mut wallet, config, _) = setup();
        let disputed = dispute(&mut wallet, Some(team_purchase(&config)), None, "pi_1");
        assert!(disputed.entry.is_none());
        let marker = disputed.payment.unwrap();
        let late = settle(
            &mut wallet,
            disputed.purchase,
            Some(&marker),
            &outcome("succeeded", Some(5000)),
            &config,
        )
        .unwrap();
        assert!(late.entry.is_none());
        assert_eq!(late.purchase.unwrap().status, PurchaseStatus::Disputed);
        assert_eq!(wallet.balance, c("200"));
    }
}
