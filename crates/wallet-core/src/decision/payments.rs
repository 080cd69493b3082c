//! Buying credits and Stripe's news about payments: owner purchases (start,
//! open, settle), the auto top-up charge the alarm sends, and refunds and
//! disputes, each ending with its events and what it does to auto top-up.

use super::{outcome_intent_id, Decision, OpRow, Reply, Step, Write};
use crate::api::{ApiError, PurchaseReply, PurchaseStartReply};
use crate::auto_top_up::DisabledReason;
use crate::events::EventType;
use crate::purchase::{
    self, is_purchase_id, ChargeOutcome, Purchase, PurchaseStatus, Settlement, Start,
};
use crate::stripe::{ChargeRefund, DisputeOutcome};
use crate::wallet::{PurchaseSource, Wallet};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// `PurchaseSettle`: a charge outcome (the purchase's own Stripe answer, a
/// webhook or a refresh) applied to the purchase it names.
pub(super) fn settle(s: &mut Step, purchase_id: Option<&str>, outcome: &ChargeOutcome) -> Reply {
    if let ChargeOutcome::Intent { intent } = outcome {
        if intent.org_id.as_deref() != Some(s.wallet.org_id()) {
            s.d.notes.push(format!(
                "PaymentIntent {} names another organization; ignored",
                intent.id
            ));
            s.ended_early = true;
            return Reply::json(200, &PurchaseReply { purchase: None });
        }
    }
    let by_id = purchase_id
        .filter(|id| is_purchase_id(id))
        .and(s.loaded.purchase.clone());
    let purchase = by_id.or_else(|| s.loaded.purchase_by_intent.clone());
    let status_before = purchase.as_ref().map(|p| p.status);
    let customer = s.wallet.stripe_customer_id().map(str::to_string);
    let payment = s.loaded.credited_payment.as_ref();
    let settlement = match purchase::settle(
        &mut s.wallet,
        purchase,
        payment,
        outcome,
        customer.as_deref(),
    ) {
        Ok(settlement) => settlement,
        Err(r) => return Reply::rejected(r, s.now),
    };
    if let Some(refusal) = &settlement.refusal {
        s.d.notes.push(format!(
            "succeeded PaymentIntent {} not credited: {refusal:?}; needs a person",
            outcome_intent_id(outcome).unwrap_or("-")
        ));
    }
    s.changed |= !settlement.entries.is_empty();
    if let Some(p) = &settlement.purchase {
        s.changed |= purchase_ended(&mut s.wallet, p, status_before, &mut s.due);
    }
    record_settlement(settlement, &mut s.d, s.now)
}

/// `charge.dispute.created`.
pub(super) fn dispute(s: &mut Step, payment_intent_id: &str, dispute_id: &str) -> Reply {
    let settlement = purchase::dispute(
        &mut s.wallet,
        s.loaded.purchase_by_intent.clone(),
        s.loaded.credited_payment.clone(),
        payment_intent_id,
    );
    let (wallet, loaded) = (&mut s.wallet, s.loaded);
    s.changed |= disputed(
        wallet,
        &settlement,
        dispute_id,
        loaded,
        &mut s.d,
        &mut s.due,
    );
    record_settlement(settlement, &mut s.d, s.now)
}

/// `charge.refunded`.
pub(super) fn refund(s: &mut Step, payment_intent_id: &str, refund: &ChargeRefund) -> Reply {
    let settlement = purchase::refund(
        &mut s.wallet,
        s.loaded.purchase_by_intent.clone(),
        s.loaded.credited_payment.clone(),
        refund,
    );
    s.changed |= refunded(&settlement, payment_intent_id, refund, &mut s.d, &mut s.due);
    record_settlement(settlement, &mut s.d, s.now)
}

/// `charge.dispute.closed`: its event only when it closed the dispute now.
pub(super) fn close_dispute(
    s: &mut Step,
    payment_intent_id: &str,
    dispute_id: &str,
    outcome: &DisputeOutcome,
) -> Reply {
    let marker = s.loaded.credited_payment.clone();
    let status_before = marker
        .as_ref()
        .and_then(|m| m.reconciliation.dispute_status);
    let purchase = s.loaded.purchase_by_intent.clone();
    let settlement = match purchase::close_dispute(&mut s.wallet, purchase, marker, outcome) {
        Ok(settlement) => settlement,
        Err(r) => return Reply::rejected(r, s.now),
    };
    let closed = settlement
        .payment
        .as_ref()
        .is_some_and(|m| m.reconciliation.dispute_status != status_before);
    if closed {
        let extra = json!({ "dispute_id": dispute_id, "status": outcome.as_str() });
        let data = payment_news(&settlement, payment_intent_id, extra);
        s.due.push((EventType::PurchaseDisputeClosed, data));
    }
    s.changed |= !settlement.entries.is_empty();
    record_settlement(settlement, &mut s.d, s.now)
}

/// `PurchaseGet`.
pub(super) fn get(s: &Step) -> Reply {
    match &s.loaded.purchase {
        Some(purchase) => Reply::json(200, purchase),
        None => Reply::error(&ApiError::PurchaseNotFound, s.now),
    }
}

/// `PurchaseStart` (no payment method: only looks) and `PurchaseOpen`.
pub(super) fn begin(
    s: &mut Step,
    request: (&str, &str, &str, &str),
    payment_method_id: Option<&String>,
) -> Reply {
    begin_purchase(
        &s.wallet,
        s.loaded,
        request,
        payment_method_id,
        s.config,
        &mut s.d,
    )
}

/// `AutoTopUpSend`.
pub(super) fn send(s: &mut Step, purchase_id: &str, payment_method_id: Option<&str>) -> Reply {
    let purchase = s.loaded.purchase.as_ref().filter(|p| p.id == purchase_id);
    let mut changed = false;
    let reply = send_auto_top_up(
        &mut s.wallet,
        purchase,
        payment_method_id,
        &mut s.d,
        &mut s.due,
        &mut changed,
    );
    s.changed |= changed;
    reply
}

/// A purchase reached (or left) a final state in this decision: its event,
/// and auto top-up may start again, or is switched off by a failure.
fn purchase_ended(
    wallet: &mut Wallet,
    purchase: &Purchase,
    status_before: Option<PurchaseStatus>,
    due: &mut Vec<(EventType, Value)>,
) -> bool {
    if status_before == Some(purchase.status) {
        return false;
    }
    let auto = purchase.source == PurchaseSource::AutoTopUp;
    let failure = match purchase.status {
        PurchaseStatus::Succeeded => {
            due.push((
                EventType::PurchaseSucceeded,
                json!({
                    "purchase_id": purchase.id,
                    "pack_id": purchase.pack_id,
                    "credits": purchase.credits_granted,
                    "amount_cents": purchase.amount_cents,
                    "currency": purchase.currency,
                    "source": purchase.source.as_str(),
                }),
            ));
            None
        }
        PurchaseStatus::Failed => {
            due.push((EventType::PurchaseFailed, purchase_failed_data(purchase)));
            Some(DisabledReason::PaymentFailed)
        }
        // Off-session nobody is there to authenticate: for auto top-up
        // that is a failed charge (the owner may still finish it).
        PurchaseStatus::RequiresAction if auto => Some(DisabledReason::PaymentFailed),
        PurchaseStatus::RequiresAction
        | PurchaseStatus::Processing
        | PurchaseStatus::Disputed
        | PurchaseStatus::Canceled => {
            return false;
        }
    };
    end_auto_top_up(wallet, purchase, failure, due)
}

fn purchase_failed_data(purchase: &Purchase) -> Value {
    json!({
        "purchase_id": purchase.id,
        "pack_id": purchase.pack_id,
        "source": purchase.source.as_str(),
        "decline_code": purchase.decline_code,
    })
}

/// Ends the in-flight auto top-up `purchase` (if it is that one), with the
/// `auto_top_up.failed` event of a failure. Whether the wallet changed.
fn end_auto_top_up(
    wallet: &mut Wallet,
    purchase: &Purchase,
    failure: Option<DisabledReason>,
    due: &mut Vec<(EventType, Value)>,
) -> bool {
    match wallet.auto_top_up_mut().end(&purchase.id, failure) {
        crate::auto_top_up::Ended::Unrelated => false,
        crate::auto_top_up::Ended::Succeeded => true,
        crate::auto_top_up::Ended::Failed(reason) => {
            due.push((
                EventType::AutoTopUpFailed,
                json!({
                    "purchase_id": purchase.id,
                    "reason": reason.as_str(),
                    "decline_code": purchase.decline_code,
                }),
            ));
            true
        }
    }
}

/// `AutoTopUpSend`: claims the in-flight purchase's charge for the payment
/// method on file, or, with none on file, ends it and switches auto top-up off.
fn send_auto_top_up(
    wallet: &mut Wallet,
    purchase: Option<&Purchase>,
    payment_method_id: Option<&str>,
    d: &mut Decision,
    due: &mut Vec<(EventType, Value)>,
    changed: &mut bool,
) -> Reply {
    let now = wallet.now();
    let Some(purchase) = purchase else {
        return Reply::error(&ApiError::PurchaseNotFound, now);
    };
    let mut purchase = purchase.clone();
    let in_flight = wallet.auto_top_up().in_flight.as_deref() == Some(purchase.id.as_str());
    let send_charge = in_flight && purchase.needs_auto_charge(now);
    // A resend repeats the first attempt: the card it charged, whatever
    // the default is now (Stripe refuses a key reused with other parameters).
    let payment_method_id = purchase
        .payment_method_id
        .clone()
        .or(payment_method_id.map(str::to_string));
    if send_charge {
        match &payment_method_id {
            Some(method) => {
                purchase.payment_method_id = Some(method.clone());
                purchase.charge_started_at = Some(now);
            }
            None => {
                purchase.status = PurchaseStatus::Failed;
                purchase.charge_started_at = None;
                due.push((EventType::PurchaseFailed, purchase_failed_data(&purchase)));
                *changed |= end_auto_top_up(
                    wallet,
                    &purchase,
                    Some(DisabledReason::PaymentMethodRequired),
                    due,
                );
            }
        }
        purchase.updated_at = now;
        d.writes.push(Write::Purchase(purchase.clone()));
    }
    Reply::json(
        200,
        &PurchaseStartReply::Existing {
            send_charge: send_charge && payment_method_id.is_some(),
            purchase: Box::new(purchase),
        },
    )
}

/// `PurchaseStart` (no payment method: only looks) and `PurchaseOpen`.
fn begin_purchase(
    wallet: &Wallet,
    loaded: &super::Loaded,
    (purchase_id, idempotency_key, fingerprint, pack_id): (&str, &str, &str, &str),
    payment_method_id: Option<&String>,
    config: &crate::config::WalletConfig,
    d: &mut Decision,
) -> Reply {
    let now = wallet.now();
    let started = |purchase: Box<Purchase>, send_charge: bool| {
        Reply::json(
            200,
            &PurchaseStartReply::Existing {
                purchase,
                send_charge,
            },
        )
    };
    match purchase::start(
        loaded.purchase.clone(),
        idempotency_key,
        fingerprint,
        pack_id,
        now,
    ) {
        Start::KeyReused => Reply::error(&ApiError::IdempotencyKeyReused, now),
        Start::Existing {
            purchase,
            send_charge,
            changed,
        } => {
            if changed {
                d.writes.push(Write::Purchase((*purchase).clone()));
            }
            started(purchase, send_charge)
        }
        Start::New => match (payment_method_id, config.pack(pack_id)) {
            (None, _) => Reply::json(
                200,
                &PurchaseStartReply::New {
                    stripe_customer_id: wallet.stripe_customer_id().map(str::to_string),
                },
            ),
            (Some(_), None) => Reply::error(
                &ApiError::invalid("pack_id", "is not in the catalogue"),
                now,
            ),
            (Some(payment_method_id), Some(pack)) => {
                let purchase = Purchase::open(
                    purchase_id,
                    pack,
                    idempotency_key,
                    fingerprint,
                    payment_method_id,
                    now,
                );
                d.writes.push(Write::Purchase(purchase.clone()));
                started(Box::new(purchase), true)
            }
        },
    }
}

/// The data of a `purchase.*` event about a payment's reconciliation: the
/// purchase and what its marker now records, plus `extra`.
fn payment_news(settlement: &Settlement, payment_intent_id: &str, extra: Value) -> Value {
    let marker = settlement.payment.as_ref();
    let purchase = settlement.purchase.as_ref();
    let mut data = json!({
        "purchase_id": purchase.map(|p| p.id.clone()).or_else(|| marker.and_then(|m| m.purchase_id.clone())),
        "payment_intent_id": payment_intent_id,
        "source": purchase.map(|p| p.source.as_str()),
        "credits": marker.map(|m| m.credits),
        "credits_reversed": marker.map(|m| m.credits_reversed),
        "credits_refunded": marker.map(|m| m.reconciliation.credits_refunded),
        "credits_unrecovered": marker.map(|m| m.reconciliation.credits_unrecovered),
        "credits_reinstated": marker.map(|m| m.reconciliation.credits_reinstated),
        "amount_refunded_cents": marker.map(|m| m.reconciliation.amount_refunded_cents),
    });
    if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
        data.extend(extra);
    }
    data
}

/// After `charge.dispute.created`: the event, and auto top-up switched off
/// (its charge canceled if never sent), since the card may be stolen.
fn disputed(
    wallet: &mut Wallet,
    settlement: &Settlement,
    dispute_id: &str,
    loaded: &super::Loaded,
    d: &mut Decision,
    due: &mut Vec<(EventType, Value)>,
) -> bool {
    let Some(marker) = settlement.payment.as_ref() else {
        return false;
    };
    d.notes.push(format!(
        "dispute {dispute_id} on {}: took back {} credits",
        marker.payment_intent_id, marker.credits_reversed
    ));
    due.push((
        EventType::PurchaseDisputed,
        payment_news(
            settlement,
            &marker.payment_intent_id,
            json!({ "dispute_id": dispute_id }),
        ),
    ));
    let mut changed = wallet
        .auto_top_up_mut()
        .switch_off(DisabledReason::PaymentDisputed);
    changed |= cancel_unsent_auto_top_up(wallet, loaded.purchase.as_ref(), d);
    changed || !settlement.entries.is_empty()
}

/// After `charge.refunded`: the event when this delivery was news.
fn refunded(
    settlement: &Settlement,
    payment_intent_id: &str,
    refund: &crate::stripe::ChargeRefund,
    d: &mut Decision,
    due: &mut Vec<(EventType, Value)>,
) -> bool {
    if settlement.payment.is_none() {
        return false;
    }
    let taken: i64 = settlement.entries.iter().map(|e| e.amount.units()).sum();
    d.notes.push(format!(
        "refund of {} cents in all on {payment_intent_id} ({}): took back {} credits",
        refund.amount_refunded_cents,
        refund.charge_id,
        crate::money::Credits::from_units(taken)
    ));
    due.push((
        EventType::PurchaseRefunded,
        payment_news(
            settlement,
            payment_intent_id,
            json!({
                "charge_id": refund.charge_id,
                "credits_taken_back": crate::money::Credits::from_units(taken),
            }),
        ),
    ));
    !settlement.entries.is_empty()
}

/// Cancels the in-flight auto top-up `purchase` when its charge was never
/// sent; a sent one is only followed to its outcome. Whether it did.
pub(super) fn cancel_unsent_auto_top_up(
    wallet: &mut Wallet,
    purchase: Option<&Purchase>,
    d: &mut Decision,
) -> bool {
    let now = wallet.now();
    let Some(mut purchase) = purchase.cloned() else {
        return false;
    };
    if wallet.auto_top_up().in_flight.as_deref() != Some(purchase.id.as_str())
        || !purchase.cancel_unsent(now)
    {
        return false;
    }
    wallet.auto_top_up_mut().forget_in_flight(&purchase.id);
    d.notes.push(format!(
        "auto top-up {} canceled before its charge was sent",
        purchase.id
    ));
    d.writes.push(Write::Purchase(purchase));
    true
}

/// Queues a settlement's writes and answers its purchase.
fn record_settlement(settlement: Settlement, d: &mut Decision, now: DateTime<Utc>) -> Reply {
    for entry in settlement.entries {
        d.writes.push(Write::Op(OpRow {
            seq: entry.seq,
            idempotency: None,
            status: 200,
            answer: None,
            entry: Some(entry),
            created_at_ms: now.timestamp_millis(),
        }));
        d.entry_written = true;
    }
    if let Some(payment) = settlement.payment {
        d.writes.push(Write::CreditedPayment(payment));
    }
    if settlement.purchase_changed {
        if let Some(purchase) = &settlement.purchase {
            d.writes.push(Write::Purchase(purchase.clone()));
        }
    }
    Reply::json(
        200,
        &PurchaseReply {
            purchase: settlement.purchase,
        },
    )
}
