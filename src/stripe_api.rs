//! Stripe over the Workers `fetch`: async-stripe's request builders sent by
//! our own `StripeClient`, with a bounded retry loop (only for requests that
//! are safe to repeat), per-attempt timeouts, and the few calls this service
//! makes.
//!
//! Answers are read into small types holding the fields used here, not into
//! the SDK's `stripe_shared::{Customer, PaymentMethod, Error}`: those types
//! reach most of Stripe's object graph (subscriptions, invoices, sources,
//! issuing, …); with them (and the webhook crate's typed events) the release
//! wasm measured 1.37 MB gzipped, against 440 KB without and a 500 KB budget.
//! PaymentIntents are read by `wallet_core::stripe::IntentState` (shared with
//! the webhook), which also reads the local emulator's.

use bytes::Bytes;
use futures_util::future::{select, Either};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::time::Duration;
use stripe_client_core::{
    CustomizableStripeRequest, CustomizedStripeRequest, IdempotencyKey, RequestBuilder,
    RequestStrategy, StripeClient, StripeClientErr, StripeMethod, StripeRequest,
};
use stripe_core::customer::{
    CreateCustomer, RetrieveCustomer, UpdateCustomer, UpdateCustomerInvoiceSettings,
};
use stripe_core::payment_intent::RetrievePaymentIntent;
use stripe_payment::payment_method::AttachPaymentMethod;
use stripe_types::Currency;
use wallet_core::api::ApiError;
use wallet_core::purchase::{
    charge_idempotency_key, customer_idempotency_key, ChargeOutcome, Purchase, CHARGE_LEASE_SECONDS,
};
use wallet_core::stripe::{IntentState, StripeConfig, META_ORG, META_PACK, META_PURCHASE};
use wasm_bindgen::JsValue;
use worker::send::SendFuture;
use worker::{console_error, AbortController, Delay, Fetch, Headers, Method, Request, RequestInit};

/// Attempts per request, when repeating it is safe.
const ATTEMPTS: usize = 3;
/// Waits before the second and third attempts.
const BACKOFF: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(1200)];
/// Per attempt, reading the body included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(25);
// A charge call, retries included, ends before its lease lets a replay resend it.
const _: () = assert!(
    ATTEMPTS as u64 * ATTEMPT_TIMEOUT.as_secs() + 2 < CHARGE_LEASE_SECONDS as u64,
    "the charge lease must outlast a charge call"
);
/// Larger answers are not read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

pub struct Stripe {
    api_base: String,
    secret_key: String,
}

/// Stripe refused a request (a 4xx other than 409 and 429): it took no effect.
#[derive(Debug, Default)]
pub struct Refusal {
    pub status: u16,
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    /// The PaymentIntent a declined charge created, when Stripe names it.
    pub payment_intent_id: Option<String>,
}

impl Refusal {
    /// A card (or bank) said no: the charge was attempted and declined.
    pub fn is_decline(&self) -> bool {
        self.status == 402 || self.error_type.as_deref() == Some("card_error")
    }

    /// Stripe refused this request but not what it stands for: an
    /// `idempotency_error` ("Keys for idempotent requests can only be used
    /// with the same parameters") says the key's first request exists, and
    /// that one may well have charged. Never read as a decline.
    pub fn leaves_outcome_unknown(&self) -> bool {
        self.error_type.as_deref() == Some("idempotency_error")
    }
}

#[derive(Debug)]
pub enum StripeError {
    Refused(Refusal),
    /// No usable answer: network failure, timeout, or 409/429/5xx after the
    /// retries. The request may or may not have taken effect.
    Unavailable(String),
    /// A 2xx answer that could not be read.
    Unreadable(String),
}

impl Display for StripeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StripeError::Refused(r) => write!(
                f,
                "Stripe refused the request: {} {} {}",
                r.status,
                r.error_type.as_deref().unwrap_or("-"),
                r.code.as_deref().unwrap_or("-")
            ),
            StripeError::Unavailable(why) => write!(f, "Stripe unavailable: {why}"),
            StripeError::Unreadable(why) => write!(f, "unreadable Stripe answer: {why}"),
        }
    }
}

impl StripeError {
    /// The answer for a request that needed Stripe and got no usable answer:
    /// 503, which the caller may retry; 500 when Stripe refused our key
    /// (401/403: a configuration problem, not the caller's).
    pub fn api_error(&self) -> ApiError {
        match self {
            StripeError::Refused(r) if matches!(r.status, 401 | 403) => ApiError::Internal,
            _ => ApiError::PaymentProviderUnavailable,
        }
    }
}

impl StripeClientErr for StripeError {
    fn deserialize_err(msg: impl Display) -> Self {
        StripeError::Unreadable(msg.to_string())
    }
}

impl StripeClient for Stripe {
    type Err = StripeError;

    fn execute(
        &self,
        req: CustomizedStripeRequest,
    ) -> impl std::future::Future<Output = Result<Bytes, StripeError>> + Send {
        let (request, config) = req.into_pieces();
        let key = config
            .request_strategy
            .and_then(|strategy| strategy.get_key())
            .map(IdempotencyKey::into_inner);
        // Workers run one thread; the fetch future is never sent anywhere.
        SendFuture::new(self.send(request, key))
    }
}

/// The default payment method as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodSummary {
    pub id: String,
    pub type_: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
}

impl PaymentMethodSummary {
    pub fn to_json(summary: Option<&PaymentMethodSummary>) -> Value {
        match summary {
            None => json!({ "has_payment_method": false }),
            Some(pm) => json!({
                "has_payment_method": true,
                "type": pm.type_,
                "brand": pm.brand,
                "last4": pm.last4,
            }),
        }
    }

    fn of(pm: PaymentMethodFields) -> PaymentMethodSummary {
        let (brand, last4) = match (pm.card, pm.sepa_debit, pm.us_bank_account) {
            (Some(card), _, _) => (Some(card.brand), Some(card.last4)),
            (_, Some(account), _) | (_, _, Some(account)) => (None, account.last4),
            _ => (None, None),
        };
        PaymentMethodSummary {
            id: pm.id,
            type_: pm.type_,
            brand,
            last4,
        }
    }
}

/// Any object's id (unknown fields are skipped, as in the types below).
#[derive(miniserde::Deserialize)]
struct IdFields {
    id: String,
}

/// A Customer retrieved with its default payment method expanded.
#[derive(miniserde::Deserialize)]
struct CustomerFields {
    /// Present (true) on a deleted customer.
    deleted: Option<bool>,
    invoice_settings: Option<InvoiceSettingsFields>,
}

#[derive(miniserde::Deserialize)]
struct InvoiceSettingsFields {
    /// Expanded on request, so an object (or null); otherwise an id, which
    /// this type cannot read: use `IdFields` for unexpanded customers.
    default_payment_method: Option<PaymentMethodFields>,
}

#[derive(miniserde::Deserialize)]
struct PaymentMethodFields {
    id: String,
    #[serde(rename = "type")]
    type_: String,
    card: Option<CardFields>,
    sepa_debit: Option<AccountFields>,
    us_bank_account: Option<AccountFields>,
}

#[derive(miniserde::Deserialize)]
struct CardFields {
    brand: String,
    last4: String,
}

#[derive(miniserde::Deserialize)]
struct AccountFields {
    last4: Option<String>,
}

/// The parameters of `POST /payment_intents` this service sets, sent with
/// the SDK's form encoding. async-stripe's `CreatePaymentIntent` carries
/// every PaymentIntent option, and its serializer alone was about a fifth of
/// the gzipped wasm's growth budget; these six fields are all a charge needs.
#[derive(Serialize)]
struct OffSessionCharge<'a> {
    amount: i64,
    currency: Currency,
    customer: &'a str,
    payment_method: &'a str,
    confirm: bool,
    off_session: bool,
    metadata: BTreeMap<&'static str, &'a str>,
}

impl<'a> OffSessionCharge<'a> {
    fn of(
        org_id: &'a str,
        customer_id: &'a str,
        payment_method: &'a str,
        purchase: &'a Purchase,
    ) -> OffSessionCharge<'a> {
        OffSessionCharge {
            amount: purchase.amount_cents,
            currency: Currency::USD,
            customer: customer_id,
            payment_method,
            confirm: true,
            off_session: true,
            metadata: BTreeMap::from([
                (META_ORG, org_id),
                (META_PACK, purchase.pack_id.as_str()),
                (META_PURCHASE, purchase.id.as_str()),
            ]),
        }
    }

    fn form(&self) -> RequestBuilder {
        RequestBuilder::new(StripeMethod::Post, "/payment_intents").form(self)
    }
}

/// An SDK request, answered as `T`.
fn request<T>(request: &impl StripeRequest) -> CustomizableStripeRequest<T> {
    request.build().customize()
}

fn idempotent(key: String) -> Result<RequestStrategy, StripeError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| StripeError::Unreadable(e.to_string()))
}

impl Stripe {
    pub fn new(config: &StripeConfig) -> Stripe {
        Stripe {
            api_base: config.api_base.clone(),
            secret_key: config.secret_key.clone(),
        }
    }

    /// The customer's default payment method (`invoice_settings.default_payment_method`).
    pub async fn default_payment_method(
        &self,
        customer_id: &str,
    ) -> Result<Option<PaymentMethodSummary>, StripeError> {
        let retrieve = RetrieveCustomer::new(customer_id)
            .expand(vec!["invoice_settings.default_payment_method".to_string()]);
        let customer: CustomerFields = request(&retrieve).send(self).await?;
        if customer.deleted == Some(true) {
            return Ok(None);
        }
        Ok(customer
            .invoice_settings
            .and_then(|settings| settings.default_payment_method)
            .map(PaymentMethodSummary::of))
    }

    /// Creates the organization's customer; repeats within Stripe's idempotency
    /// window answer the same customer.
    pub async fn create_customer(&self, org_id: &str) -> Result<String, StripeError> {
        let create = CreateCustomer::new()
            .description(format!("AI Wallet organization {org_id}"))
            .metadata(HashMap::from([(META_ORG.to_string(), org_id.to_string())]));
        let customer: IdFields = request(&create)
            .request_strategy(idempotent(customer_idempotency_key(org_id))?)
            .send(self)
            .await?;
        Ok(customer.id)
    }

    /// Attaches a payment method to the customer and makes it the default.
    pub async fn set_default_payment_method(
        &self,
        customer_id: &str,
        payment_method_id: &str,
    ) -> Result<PaymentMethodSummary, StripeError> {
        let attach = AttachPaymentMethod::new(payment_method_id).customer(customer_id);
        let attached: PaymentMethodFields = request(&attach).send(self).await?;
        let mut settings = UpdateCustomerInvoiceSettings::new();
        settings.default_payment_method = Some(attached.id.clone());
        let update = UpdateCustomer::new(customer_id).invoice_settings(settings);
        let _: IdFields = request(&update).send(self).await?;
        Ok(PaymentMethodSummary::of(attached))
    }

    /// Creates and confirms the purchase's off-session PaymentIntent. The
    /// Stripe idempotency key comes from the purchase id, so a resend answers
    /// the first PaymentIntent instead of charging again.
    pub async fn charge(
        &self,
        org_id: &str,
        customer_id: &str,
        purchase: &Purchase,
    ) -> Result<IntentState, StripeError> {
        let payment_method = purchase
            .payment_method_id
            .as_deref()
            .ok_or_else(|| StripeError::Unreadable("purchase has no payment method".into()))?;
        let request = OffSessionCharge::of(org_id, customer_id, payment_method, purchase).form();
        let bytes = self
            .send(request, Some(charge_idempotency_key(&purchase.id)))
            .await?;
        IntentState::from_json(&bytes).map_err(|e| StripeError::Unreadable(e.to_string()))
    }

    pub async fn payment_intent(&self, id: &str) -> Result<IntentState, StripeError> {
        let bytes = self
            .send(RetrievePaymentIntent::new(id).build(), None)
            .await?;
        IntentState::from_json(&bytes).map_err(|e| StripeError::Unreadable(e.to_string()))
    }

    /// Sends one API request; retries only what may be repeated (reads, and
    /// writes carrying an idempotency key) on network errors, timeouts, 409,
    /// 429 and 5xx, unless Stripe says not to.
    async fn send(
        &self,
        request: RequestBuilder,
        idempotency_key: Option<String>,
    ) -> Result<Bytes, StripeError> {
        let method = match request.method {
            StripeMethod::Get => Method::Get,
            StripeMethod::Post => Method::Post,
            StripeMethod::Delete => Method::Delete,
        };
        let repeatable = matches!(method, Method::Get) || idempotency_key.is_some();
        let mut url = format!("{}/v1{}", self.api_base, request.path);
        if let Some(query) = request.query.as_deref().filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(query);
        }
        let mut last_failure = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                Delay::from(BACKOFF[attempt - 1]).await;
            }
            let answer = self
                .attempt(
                    &url,
                    method.clone(),
                    request.body.as_deref(),
                    idempotency_key.as_deref(),
                )
                .await;
            let (status, should_retry, body) = match answer {
                Ok(answer) => answer,
                Err(why) => {
                    last_failure = why;
                    if repeatable {
                        continue;
                    }
                    break;
                }
            };
            if (200..300).contains(&status) {
                return Ok(body);
            }
            let transient = matches!(status, 409 | 429 | 500..=599);
            if !transient && should_retry != Some(true) {
                return Err(StripeError::Refused(refusal(status, &body)));
            }
            last_failure = format!("HTTP {status}");
            if !repeatable || should_retry == Some(false) {
                break;
            }
        }
        Err(StripeError::Unavailable(last_failure))
    }

    /// One HTTP exchange: `(status, Stripe-Should-Retry, body)`, or why none.
    async fn attempt(
        &self,
        url: &str,
        method: Method,
        body: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Option<bool>, Bytes), String> {
        let headers = Headers::new();
        let set = |name: &str, value: &str| headers.set(name, value).map_err(|e| e.to_string());
        set("authorization", &format!("Bearer {}", self.secret_key))?;
        set("stripe-version", stripe_client_core::VERSION.as_str())?;
        set("user-agent", "ai-wallet/1 (Cloudflare Workers)")?;
        if let Some(key) = idempotency_key {
            set("idempotency-key", key)?;
        }
        if body.is_some() {
            set("content-type", "application/x-www-form-urlencoded")?;
        }
        let mut init = RequestInit::new();
        init.with_method(method)
            .with_headers(headers)
            .with_body(body.map(JsValue::from_str));
        let request = Request::new_with_init(url, &init).map_err(|e| e.to_string())?;
        let controller = AbortController::default();
        let signal = controller.signal();
        let exchange = async move {
            let mut response = Fetch::Request(request)
                .send_with_signal(&signal)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status_code();
            let should_retry = response
                .headers()
                .get("stripe-should-retry")
                .ok()
                .flatten()
                .map(|v| v == "true");
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            if bytes.len() > MAX_RESPONSE_BYTES {
                return Err(format!("answer of {} bytes", bytes.len()));
            }
            Ok((status, should_retry, Bytes::from(bytes)))
        };
        match select(Box::pin(exchange), Box::pin(Delay::from(ATTEMPT_TIMEOUT))).await {
            Either::Left((result, _)) => result,
            Either::Right(_) => {
                controller.abort();
                Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))
            }
        }
    }
}

/// Reads the fields of Stripe's error object used here.
pub fn refusal(status: u16, body: &[u8]) -> Refusal {
    let raw: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &raw["error"];
    let text = |field: &str| error[field].as_str().map(str::to_string);
    Refusal {
        status,
        error_type: text("type"),
        code: text("code"),
        decline_code: text("decline_code"),
        payment_intent_id: error["payment_intent"]["id"].as_str().map(str::to_string),
    }
}

/// Sends a purchase's charge (off-session, to its payment method) and reads
/// Stripe's answer as the purchase's outcome: a PaymentIntent, a refusal
/// (nothing was charged), or no answer (the same key may be sent again).
pub async fn charge_purchase(
    stripe: &Stripe,
    org: &str,
    customer: &str,
    purchase: &Purchase,
) -> ChargeOutcome {
    let answer = stripe.charge(org, customer, purchase).await;
    if let Err(err) = &answer {
        console_error!("charge of purchase {}: {err}", purchase.id);
    }
    charge_outcome(answer)
}

/// Stripe's answer to a charge as its outcome. Only a refusal of the charge
/// itself is `Refused`; our key refused (401/403), no answer, or a key
/// already used with other parameters leave the outcome unknown (the same
/// key is sent again later).
fn charge_outcome(answer: Result<IntentState, StripeError>) -> ChargeOutcome {
    match answer {
        Ok(intent) => ChargeOutcome::Intent { intent },
        Err(StripeError::Refused(refusal))
            if !matches!(refusal.status, 401 | 403) && !refusal.leaves_outcome_unknown() =>
        {
            let decline_code = refusal
                .is_decline()
                .then(|| refusal.decline_code.clone().or(refusal.code.clone()))
                .flatten();
            ChargeOutcome::Refused {
                payment_intent_id: refusal.payment_intent_id,
                decline_code,
            }
        }
        Err(_) => ChargeOutcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: Option<&str>) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = body
            .unwrap_or_default()
            .split('&')
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name.to_string(), value.to_string())
            })
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn a_charge_sends_what_the_sdk_request_with_the_same_fields_sends() {
        use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
        let ours = OffSessionCharge {
            amount: 2_000,
            currency: Currency::USD,
            customer: "cus_1",
            payment_method: "pm_card_visa",
            confirm: true,
            off_session: true,
            metadata: BTreeMap::from([
                (META_ORG, "org a&b"),
                (META_PACK, "pack_20"),
                (META_PURCHASE, "pur_1"),
            ]),
        }
        .form();
        let metadata = HashMap::from([
            (META_ORG.to_string(), "org a&b".to_string()),
            (META_PACK.to_string(), "pack_20".to_string()),
            (META_PURCHASE.to_string(), "pur_1".to_string()),
        ]);
        let sdk = CreatePaymentIntent::new(2_000, Currency::USD)
            .customer("cus_1")
            .payment_method("pm_card_visa")
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(metadata)
            .build();
        assert_eq!(ours.path, sdk.path);
        assert!(matches!(ours.method, StripeMethod::Post));
        let sent = pairs(ours.body.as_deref());
        assert_eq!(sent, pairs(sdk.body.as_deref()));
        let expected = [
            ("amount", "2000"),
            ("confirm", "true"),
            ("currency", "usd"),
            ("customer", "cus_1"),
            ("metadata[org_id]", "org+a%26b"),
            ("metadata[pack_id]", "pack_20"),
            ("metadata[purchase_id]", "pur_1"),
            ("off_session", "true"),
            ("payment_method", "pm_card_visa"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(sent, expected);
    }

    fn refused(status: u16, body: &str) -> ChargeOutcome {
        charge_outcome(Err(StripeError::Refused(refusal(status, body.as_bytes()))))
    }

    #[test]
    fn a_key_reused_with_other_parameters_is_an_unknown_outcome_never_a_decline() {
        let body = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
        assert_eq!(refused(400, body), ChargeOutcome::Unknown);
    }

    #[test]
    fn a_declined_card_is_refused_with_its_decline_code() {
        let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","payment_intent":{"id":"pi_1"}}}"#;
        assert_eq!(
            refused(402, body),
            ChargeOutcome::Refused {
                payment_intent_id: Some("pi_1".into()),
                decline_code: Some("insufficient_funds".into()),
            }
        );
    }

    #[test]
    fn an_invalid_request_is_refused_without_a_decline_code() {
        let body = r#"{"error":{"type":"invalid_request_error","code":"resource_missing"}}"#;
        assert_eq!(
            refused(400, body),
            ChargeOutcome::Refused {
                payment_intent_id: None,
                decline_code: None,
            }
        );
    }

    #[test]
    fn our_key_refused_or_no_answer_leave_the_outcome_unknown() {
        assert_eq!(refused(401, "{}"), ChargeOutcome::Unknown);
        let none = charge_outcome(Err(StripeError::Unavailable("timeout".into())));
        assert_eq!(none, ChargeOutcome::Unknown);
    }
}
