//! The Durable Object's side of purchases: each command reads the purchase
//! and its PaymentIntent's marker, decides with `wallet_core::purchase`, and
//! returns the writes, which the object commits in one transaction with the
//! wallet (no `await` in between, so a credit and its marker land together).

use crate::wallet_object::{Reply, Writes};
use crate::wallet_store::{self, OpRecord};
use wallet_core::api::{ApiError, Command, CustomerReply, PurchaseReply, PurchaseStartReply};
use wallet_core::purchase::{self, is_purchase_id, ChargeOutcome, Purchase, Settlement, Start};
use wallet_core::{Rejection, Wallet, WalletConfig};
use worker::{console_error, console_log, Result, SqlStorage};

pub(crate) fn decide(
    sql: &SqlStorage,
    wallet: &mut Wallet,
    command: &Command,
    config: &WalletConfig,
    writes: &mut Writes,
) -> Result<Reply> {
    let now = wallet.now();
    Ok(match command {
        Command::StripeCustomer => Reply::json(
            200,
            &CustomerReply {
                stripe_customer_id: wallet.stripe_customer_id.clone(),
            },
        ),
        Command::SetStripeCustomer { stripe_customer_id } => {
            // The first customer recorded stays: concurrent first purchases
            // may each create one at Stripe, but the organization keeps one.
            if wallet.stripe_customer_id.is_none() {
                wallet.stripe_customer_id = Some(stripe_customer_id.clone());
                writes.wallet_changed = true;
            }
            Reply::json(
                200,
                &CustomerReply {
                    stripe_customer_id: wallet.stripe_customer_id.clone(),
                },
            )
        }
        Command::PurchaseStart {
            purchase_id,
            idempotency_key,
            fingerprint,
            pack_id,
        } => begin(
            sql,
            wallet,
            purchase_id,
            idempotency_key,
            fingerprint,
            pack_id,
            None,
            config,
            writes,
        )?,
        Command::PurchaseOpen {
            purchase_id,
            idempotency_key,
            fingerprint,
            pack_id,
            payment_method_id,
        } => begin(
            sql,
            wallet,
            purchase_id,
            idempotency_key,
            fingerprint,
            pack_id,
            Some(payment_method_id),
            config,
            writes,
        )?,
        Command::PurchaseGet { purchase_id } => match wallet_store::purchase(sql, purchase_id)? {
            Some(purchase) => Reply::json(200, &purchase),
            None => Reply::error(&ApiError::PurchaseNotFound, now),
        },
        Command::PurchaseSettle {
            purchase_id,
            outcome,
        } => {
            let intent_id = match outcome {
                ChargeOutcome::Intent { intent } => {
                    if intent.org_id.as_deref() != Some(wallet.org_id.as_str()) {
                        console_error!(
                            "PaymentIntent {} names another organization; ignored",
                            intent.id
                        );
                        return Ok(Reply::json(200, &PurchaseReply { purchase: None }));
                    }
                    Some(intent.id.as_str())
                }
                ChargeOutcome::Refused {
                    payment_intent_id, ..
                } => payment_intent_id.as_deref(),
                ChargeOutcome::Unknown => None,
            };
            let mut purchase = match purchase_id.as_deref().filter(|id| is_purchase_id(id)) {
                Some(id) => wallet_store::purchase(sql, id)?,
                None => None,
            };
            if purchase.is_none() {
                if let Some(id) = intent_id {
                    purchase = wallet_store::purchase_by_intent(sql, id)?;
                }
            }
            let payment = match intent_id {
                Some(id) => wallet_store::credited_payment(sql, id)?,
                None => None,
            };
            match purchase::settle(wallet, purchase, payment.as_ref(), outcome, config) {
                Ok(settlement) => {
                    if let Some(refusal) = settlement.refusal {
                        console_error!(
                            "succeeded PaymentIntent {} not credited: {refusal:?}; needs a person",
                            intent_id.unwrap_or("-")
                        );
                    }
                    record(settlement, writes, now)
                }
                Err(rejection) => rejected(rejection, now),
            }
        }
        Command::Dispute {
            payment_intent_id,
            dispute_id,
        } => {
            let purchase = wallet_store::purchase_by_intent(sql, payment_intent_id)?;
            let payment = wallet_store::credited_payment(sql, payment_intent_id)?;
            let settlement = purchase::dispute(wallet, purchase, payment, payment_intent_id);
            if let Some(entry) = &settlement.entry {
                console_log!(
                    "dispute {dispute_id} on {payment_intent_id}: took back {} credits",
                    entry.amount
                );
            }
            record(settlement, writes, now)
        }
        other => unreachable!("not a purchase command: {other:?}"),
    })
}

/// `PurchaseStart` (no payment method: only looks) and `PurchaseOpen`.
#[allow(clippy::too_many_arguments)]
fn begin(
    sql: &SqlStorage,
    wallet: &Wallet,
    purchase_id: &str,
    idempotency_key: &str,
    fingerprint: &str,
    pack_id: &str,
    payment_method_id: Option<&String>,
    config: &WalletConfig,
    writes: &mut Writes,
) -> Result<Reply> {
    let now = wallet.now();
    let existing = wallet_store::purchase(sql, purchase_id)?;
    Ok(
        match purchase::start(existing, idempotency_key, fingerprint, pack_id, now) {
            Start::KeyReused => Reply::error(&ApiError::IdempotencyKeyReused, now),
            Start::Existing {
                purchase,
                send_charge,
                changed,
            } => {
                if changed {
                    writes
                        .statements
                        .push(wallet_store::upsert_purchase(&purchase));
                }
                started(purchase, send_charge)
            }
            Start::New => match (payment_method_id, config.pack(pack_id)) {
                (None, _) => Reply::json(
                    200,
                    &PurchaseStartReply::New {
                        stripe_customer_id: wallet.stripe_customer_id.clone(),
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
                    writes
                        .statements
                        .push(wallet_store::upsert_purchase(&purchase));
                    started(Box::new(purchase), true)
                }
            },
        },
    )
}

fn started(purchase: Box<Purchase>, send_charge: bool) -> Reply {
    Reply::json(
        200,
        &PurchaseStartReply::Existing {
            purchase,
            send_charge,
        },
    )
}

/// Queues a settlement's writes and answers its purchase.
fn record(
    settlement: Settlement,
    writes: &mut Writes,
    now: chrono::DateTime<chrono::Utc>,
) -> Reply {
    if let Some(entry) = &settlement.entry {
        writes.statements.push(wallet_store::insert_op(&OpRecord {
            seq: entry.seq,
            idempotency: None,
            status: 200,
            response: None,
            entry: Some(entry),
            created_at_ms: now.timestamp_millis(),
        }));
        writes.wallet_changed = true;
        writes.entry_written = true;
    }
    if let Some(payment) = &settlement.payment {
        writes
            .statements
            .push(wallet_store::upsert_credited_payment(payment));
    }
    if settlement.purchase_changed {
        if let Some(purchase) = &settlement.purchase {
            writes
                .statements
                .push(wallet_store::upsert_purchase(purchase));
        }
    }
    Reply::json(
        200,
        &PurchaseReply {
            purchase: settlement.purchase,
        },
    )
}

fn rejected(rejection: Rejection, now: chrono::DateTime<chrono::Utc>) -> Reply {
    Reply::error(&ApiError::Rejected(rejection), now)
}
