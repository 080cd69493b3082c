//! Buying credits: the pack catalogue, the payment method on file, purchases
//! (charged off-session through Stripe), and the development route that puts
//! a test card on file. Credits move only in the organization's Durable
//! Object; this module talks to Stripe and carries the answers there.

use crate::http::{call_wallet, json_response, Answer, Failure};
use crate::stripe_api::{charge_purchase, PaymentMethodSummary, Stripe, StripeError};
use crate::wallet_protocol::{self, PaymentMethodOp};
use serde::de::DeserializeOwned;
use serde_json::json;
use wallet_core::api::{
    fingerprint, ApiError, Command, CustomerReply, DevPaymentMethodBody, PurchaseBody,
    PurchaseReply, PurchaseStartReply,
};
use wallet_core::purchase::{is_purchase_id, purchase_id, ChargeOutcome, Purchase, PurchaseStatus};
use wallet_core::token::Role;
use wallet_core::WalletConfig;
use worker::{console_error, Env};

use crate::settings::Settings;

/// `GET /v1/packs`: the whole catalogue, smallest pack first (a short,
/// fixed list, so a plain array rather than a paginated page).
pub fn packs(config: &WalletConfig) -> Answer {
    Ok(json_response(200, &json!(config.packs))?)
}

fn stripe(settings: &Settings) -> Result<Stripe, Failure> {
    match &settings.stripe {
        Ok(config) => Ok(Stripe::new(config)),
        Err(problem) => {
            console_error!("Stripe is not configured: {problem}");
            Err(ApiError::Internal.into())
        }
    }
}

/// Stripe gave no usable answer: the caller may retry.
fn unavailable(err: StripeError) -> Failure {
    console_error!("{err}");
    err.api_error().into()
}

/// Sends `command` to the organization's Durable Object and reads its 200
/// answer; any other answer (404 wallet_not_found, 409, …) is the request's.
async fn ask<T: DeserializeOwned>(
    env: &Env,
    org: &str,
    now_ms: i64,
    command: Command,
) -> Result<T, Failure> {
    let mut response = call_wallet(env, org, now_ms, command).await?;
    if response.status_code() != 200 {
        return Err(Failure::Answered(response));
    }
    Ok(response.json::<T>().await?)
}

async fn customer_id(env: &Env, org: &str, now_ms: i64) -> Result<Option<String>, Failure> {
    let reply: CustomerReply = ask(env, org, now_ms, Command::StripeCustomer).await?;
    Ok(reply.stripe_customer_id)
}

/// The organization's Stripe customer, created on first need.
async fn ensure_customer(
    env: &Env,
    stripe: &Stripe,
    org: &str,
    now_ms: i64,
) -> Result<String, Failure> {
    if let Some(id) = customer_id(env, org, now_ms).await? {
        return Ok(id);
    }
    let created = stripe.create_customer(org).await.map_err(unavailable)?;
    let kept: CustomerReply = ask(
        env,
        org,
        now_ms,
        Command::SetStripeCustomer {
            stripe_customer_id: created,
        },
    )
    .await?;
    kept.stripe_customer_id
        .ok_or_else(|| ApiError::Internal.into())
}

/// `GET /v1/orgs/{org}/payment-method`: answered by the organization's
/// Durable Object, which asks Stripe at most once a minute.
pub async fn payment_method(env: &Env, org: &str, now_ms: i64) -> Answer {
    Ok(wallet_protocol::payment_method(env, org, now_ms, PaymentMethodOp::Read).await?)
}

/// The default payment method on file at Stripe now, also handed to the
/// organization's Durable Object so that reads show it at once.
async fn current_payment_method(
    env: &Env,
    stripe: &Stripe,
    org: &str,
    customer: &str,
    now_ms: i64,
) -> Result<Option<PaymentMethodSummary>, Failure> {
    let summary = stripe
        .default_payment_method(customer)
        .await
        .map_err(unavailable)?;
    remember_payment_method(env, org, now_ms, summary.clone()).await;
    Ok(summary)
}

/// Hands a payment method just read or set at Stripe to the organization's
/// Durable Object. A failure only leaves reads a minute behind: logged.
async fn remember_payment_method(
    env: &Env,
    org: &str,
    now_ms: i64,
    summary: Option<PaymentMethodSummary>,
) {
    let learned = PaymentMethodOp::Learned { summary };
    match wallet_protocol::payment_method(env, org, now_ms, learned).await {
        Ok(answer) if answer.status_code() == 200 => {}
        Ok(answer) => console_error!(
            "the wallet of {org} did not keep its payment method: HTTP {}",
            answer.status_code()
        ),
        Err(err) => console_error!("the wallet of {org} did not keep its payment method: {err}"),
    }
}

/// Answers 409 `payment_method_required` unless the organization has a
/// default payment method on file (503 when Stripe does not answer).
pub async fn require_payment_method(
    env: &Env,
    settings: &Settings,
    org: &str,
    now_ms: i64,
) -> Result<(), Failure> {
    let stripe = stripe(settings)?;
    let Some(customer) = customer_id(env, org, now_ms).await? else {
        return Err(ApiError::PaymentMethodRequired.into());
    };
    match current_payment_method(env, &stripe, org, &customer, now_ms).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::PaymentMethodRequired.into()),
    }
}

/// `POST /dev/orgs/{org}/payment-method` (development only): attaches a Stripe
/// test payment method such as `pm_card_visa` and makes it the default.
pub async fn dev_payment_method(
    env: &Env,
    settings: &Settings,
    org: &str,
    body: DevPaymentMethodBody,
    now_ms: i64,
) -> Answer {
    body.validate()?;
    let stripe = stripe(settings)?;
    let customer = ensure_customer(env, &stripe, org, now_ms).await?;
    let summary = stripe
        .set_default_payment_method(&customer, &body.payment_method)
        .await
        .map_err(|err| match err {
            StripeError::Refused(r) if !matches!(r.status, 401 | 403) => {
                ApiError::invalid("payment_method", "was refused by Stripe").into()
            }
            other => unavailable(other),
        })?;
    remember_payment_method(env, org, now_ms, Some(summary.clone())).await;
    Ok(json_response(
        200,
        &PaymentMethodSummary::to_json(Some(&summary)),
    )?)
}

/// `POST /v1/orgs/{org}/purchases`: find or open the purchase for this key,
/// charge it off-session unless that was done, and credit a synchronous
/// success at once. A replay answers the same purchase in its current state.
pub async fn create(
    env: &Env,
    settings: &Settings,
    org: &str,
    idempotency_key: String,
    body: PurchaseBody,
    now_ms: i64,
) -> Answer {
    body.validate(&settings.config)?;
    let stripe = stripe(settings)?;
    let purchase_id = purchase_id(org, &idempotency_key);
    let fingerprint = fingerprint("purchase", &body);
    let started: PurchaseStartReply = ask(
        env,
        org,
        now_ms,
        Command::PurchaseStart {
            purchase_id: purchase_id.clone(),
            idempotency_key: idempotency_key.clone(),
            fingerprint: fingerprint.clone(),
            pack_id: body.pack_id.clone(),
        },
    )
    .await?;
    let (purchase, send_charge, customer) = match started {
        PurchaseStartReply::Existing {
            purchase,
            send_charge,
        } => (purchase, send_charge, None),
        PurchaseStartReply::New { stripe_customer_id } => {
            let request = (purchase_id, idempotency_key, fingerprint, body.pack_id);
            open(env, &stripe, org, stripe_customer_id, request, now_ms).await?
        }
    };
    if !send_charge {
        return purchase_response(201, &purchase, true);
    }
    let customer = match customer {
        Some(id) => id,
        None => customer_id(env, org, now_ms)
            .await?
            .ok_or(ApiError::Internal)?,
    };
    let outcome = charge_purchase(&stripe, org, &customer, &purchase).await;
    let unknown = outcome == ChargeOutcome::Unknown;
    let settled: PurchaseReply = ask(
        env,
        org,
        now_ms,
        Command::PurchaseSettle {
            purchase_id: Some(purchase.id.clone()),
            outcome,
        },
    )
    .await?;
    if unknown {
        return Err(ApiError::PaymentProviderUnavailable.into());
    }
    let purchase = settled.purchase.ok_or(ApiError::Internal)?;
    purchase_response(201, &purchase, true)
}

/// A new purchase: the organization's customer (created at Stripe the
/// first time) and its card on file, then the purchase opened in the
/// object, to be charged by this request.
async fn open(
    env: &Env,
    stripe: &Stripe,
    org: &str,
    stripe_customer_id: Option<String>,
    (purchase_id, idempotency_key, fingerprint, pack_id): (String, String, String, String),
    now_ms: i64,
) -> Result<(Box<Purchase>, bool, Option<String>), Failure> {
    let customer = match stripe_customer_id {
        Some(id) => id,
        None => ensure_customer(env, stripe, org, now_ms).await?,
    };
    let method = current_payment_method(env, stripe, org, &customer, now_ms)
        .await?
        .ok_or(ApiError::PaymentMethodRequired)?;
    let command = Command::PurchaseOpen {
        purchase_id,
        idempotency_key,
        fingerprint,
        pack_id,
        payment_method_id: method.id,
    };
    let opened: PurchaseStartReply = ask(env, org, now_ms, command).await?;
    let PurchaseStartReply::Existing {
        purchase,
        send_charge,
    } = opened
    else {
        return Err(ApiError::Internal.into());
    };
    Ok((purchase, send_charge, Some(customer)))
}

/// `GET /v1/orgs/{org}/purchases/{id}`. A purchase that is not final is
/// refreshed from its PaymentIntent first (crediting it, once, if it has
/// succeeded meanwhile); if Stripe does not answer, the stored state is shown.
pub async fn get(
    env: &Env,
    settings: &Settings,
    org: &str,
    role: Role,
    id: &str,
    now_ms: i64,
) -> Answer {
    if !is_purchase_id(id) {
        return Err(ApiError::PurchaseNotFound.into());
    }
    let mut purchase: Purchase = ask(
        env,
        org,
        now_ms,
        Command::PurchaseGet {
            purchase_id: id.to_string(),
        },
    )
    .await?;
    let unsettled = matches!(
        purchase.status,
        PurchaseStatus::Processing | PurchaseStatus::RequiresAction
    );
    let refresh = match (&settings.stripe, &purchase.payment_intent_id) {
        (Ok(config), Some(intent_id)) if unsettled => {
            Some((Stripe::new(config), intent_id.clone()))
        }
        _ => None,
    };
    if let Some((stripe, intent_id)) = refresh {
        match stripe.payment_intent(&intent_id).await {
            Ok(intent) => {
                let settled: PurchaseReply = ask(
                    env,
                    org,
                    now_ms,
                    Command::PurchaseSettle {
                        purchase_id: Some(purchase.id.clone()),
                        outcome: ChargeOutcome::Intent { intent },
                    },
                )
                .await?;
                purchase = settled.purchase.unwrap_or(purchase);
            }
            Err(err) => console_error!("refreshing purchase {id}: {err}"),
        }
    }
    purchase_response(200, &purchase, role == Role::Owner)
}

fn purchase_response(status: u16, purchase: &Purchase, owner: bool) -> Answer {
    Ok(json_response(status, &purchase.to_json(owner))?)
}
