//! `POST /stripe/webhook`. The `Stripe-Signature` header is checked over the
//! raw body before anything is parsed: every `v1` signature against every
//! configured secret (rotation), 300 s tolerance, constant-time comparison
//! (`wallet_core::stripe::verify_signature`). Then `payment_intent.*` events settle the
//! purchase in the organization's Durable Object (succeeded credits once, by
//! PaymentIntent id, and only a purchase of that organization charged to its
//! customer), `charge.refunded` takes back the refunded share,
//! `charge.dispute.created` reverses unspent credits and switches auto top-up
//! off, `charge.dispute.closed` gives a won dispute's credits back, and
//! anything else is acknowledged and ignored. Every handler is idempotent, so
//! Stripe's retries and duplicates change nothing; errors answer 5xx so that
//! Stripe retries.

use crate::http::{call_wallet, json_response, read_body, Answer, Failure};
use crate::stripe_api::{Stripe, StripeError};
use serde_json::json;
use wallet_core::api::{is_org_id, ApiError, Command};
use wallet_core::purchase::{is_purchase_id, ChargeOutcome};
use wallet_core::stripe::{parse_event, verify_signature, StripeConfig, StripeEvent};
use worker::{console_error, console_log, Date, Env, Request};

use crate::settings::Settings;

/// `limit`: the route's body limit (`MAX_WEBHOOK_BODY_BYTES`), enforced while
/// the body streams in, with or without a `Content-Length`.
pub async fn receive(mut req: Request, env: &Env, settings: &Settings, limit: usize) -> Answer {
    let stripe_config = match &settings.stripe {
        Ok(config) => config,
        Err(problem) => {
            console_error!("Stripe is not configured: {problem}");
            return Err(ApiError::Internal.into());
        }
    };
    let signature = req.headers().get("stripe-signature")?;
    let body = read_body(&mut req, limit).await?;
    let signature = signature.ok_or(ApiError::InvalidSignature)?;
    let now_ms = Date::now().as_millis() as i64;
    verify_signature(
        &body,
        &signature,
        &stripe_config.webhook_secrets,
        now_ms / 1000,
    )
    .map_err(|_| ApiError::InvalidSignature)?;

    let (event_id, event) = parse_event(&body).map_err(|err| {
        console_error!("verified Stripe event is unreadable: {err}");
        ApiError::InvalidJson(err.to_string())
    })?;
    let (org, command) = match event {
        StripeEvent::Ignored => return received(),
        StripeEvent::PaymentIntent(intent) => {
            let Some(org) = intent.org_id.clone().filter(|org| is_org_id(org)) else {
                console_log!("event {event_id}: PaymentIntent {} is not ours", intent.id);
                return received();
            };
            let purchase_id = intent.purchase_id.clone().filter(|id| is_purchase_id(id));
            let command = Command::PurchaseSettle {
                purchase_id,
                outcome: ChargeOutcome::Intent { intent },
            };
            (org, command)
        }
        charge_event => {
            let Some((payment_intent_id, command)) = charge_command(charge_event) else {
                console_log!("event {event_id}: the charge has no PaymentIntent");
                return received();
            };
            let Some(org) = org_of_intent(stripe_config, &event_id, &payment_intent_id).await?
            else {
                return received();
            };
            (org, command)
        }
    };
    deliver(env, &org, now_ms, &event_id, command).await?;
    received()
}

/// The command of a charge or dispute event, with the PaymentIntent it is
/// about; `None` when it names none (not a card payment of ours).
fn charge_command(event: StripeEvent) -> Option<(String, Command)> {
    Some(match event {
        StripeEvent::DisputeCreated {
            dispute_id,
            payment_intent_id,
        } => {
            let payment_intent_id = payment_intent_id?;
            let command = Command::Dispute {
                payment_intent_id: payment_intent_id.clone(),
                dispute_id,
            };
            (payment_intent_id, command)
        }
        StripeEvent::DisputeClosed {
            dispute_id,
            payment_intent_id,
            outcome,
        } => {
            let payment_intent_id = payment_intent_id?;
            let command = Command::DisputeClosed {
                payment_intent_id: payment_intent_id.clone(),
                dispute_id,
                outcome,
            };
            (payment_intent_id, command)
        }
        StripeEvent::ChargeRefunded(refund) => {
            let payment_intent_id = refund.payment_intent_id.clone()?;
            let command = Command::Refund {
                payment_intent_id: payment_intent_id.clone(),
                refund,
            };
            (payment_intent_id, command)
        }
        StripeEvent::Ignored | StripeEvent::PaymentIntent(_) => return None,
    })
}

/// The organization a charge's PaymentIntent was made for. Charges and
/// disputes do not carry our metadata; their PaymentIntent does, so it is
/// read from Stripe (the organization's object then checks that the payment
/// is one of its own). `None`: not ours, acknowledged and logged.
async fn org_of_intent(
    stripe_config: &StripeConfig,
    event_id: &str,
    payment_intent_id: &str,
) -> Result<Option<String>, Failure> {
    let intent = match Stripe::new(stripe_config)
        .payment_intent(payment_intent_id)
        .await
    {
        Ok(intent) => intent,
        Err(StripeError::Refused(r)) if r.status == 404 => {
            console_log!("event {event_id}: {payment_intent_id} is unknown to Stripe");
            return Ok(None);
        }
        Err(err) => {
            console_error!("event {event_id}: {err}");
            return Err(ApiError::PaymentProviderUnavailable.into());
        }
    };
    let Some(org) = intent.org_id.filter(|org| is_org_id(org)) else {
        console_log!("event {event_id}: {payment_intent_id} is not ours");
        return Ok(None);
    };
    Ok(Some(org))
}

fn received() -> Answer {
    Ok(json_response(200, &json!({ "received": true }))?)
}

/// Applies an event in the organization's Durable Object. An organization
/// without a wallet is acknowledged (retries would not help); other failures
/// answer 500 so Stripe retries.
async fn deliver(
    env: &Env,
    org: &str,
    now_ms: i64,
    event_id: &str,
    command: Command,
) -> Result<(), Failure> {
    let response = call_wallet(env, org, now_ms, command).await?;
    match response.status_code() {
        200 => Ok(()),
        404 => {
            console_log!("event {event_id}: organization {org} has no wallet");
            Ok(())
        }
        status => {
            console_error!("event {event_id}: the wallet answered {status}");
            Err(ApiError::Internal.into())
        }
    }
}
