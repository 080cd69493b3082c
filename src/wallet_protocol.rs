//! The Worker ⇄ Durable Object protocol: an [`Envelope`] (the request time
//! and one `Command`) posted to the organization's object, answered with a
//! decision's [`Reply`] as an HTTP response; and, beside the commands, the
//! object's cache of the payment method on file ([`PaymentMethodRequest`]),
//! which the object answers itself without a decision.

use crate::stripe_api::PaymentMethodSummary;
use serde::{Deserialize, Serialize};
use wallet_core::api::{Envelope, WalletRequest};
use wallet_core::decision::Reply;
use wasm_bindgen::JsValue;
use worker::{Env, Error, Headers, Method, Request, RequestInit, Response, Result};

/// The object's path for [`PaymentMethodRequest`]s (commands go to any other).
pub const PAYMENT_METHOD_PATH: &str = "/payment-method";

/// A request about the payment method on file, at `now_ms`.
#[derive(Serialize, Deserialize)]
pub struct PaymentMethodRequest {
    pub now_ms: i64,
    pub op: PaymentMethodOp,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PaymentMethodOp {
    /// `GET …/payment-method`: answered from the cache, refreshed from
    /// Stripe at most once a minute.
    Read,
    /// The Worker just read (or set) the default payment method at Stripe:
    /// it answers reads from now on.
    Learned {
        summary: Option<PaymentMethodSummary>,
    },
}

/// Sends `request` to the organization's Durable Object; its answer is final.
pub async fn call(
    env: &Env,
    org: &str,
    now_ms: i64,
    request: impl Into<WalletRequest>,
) -> Result<Response> {
    let request = request.into();
    let envelope = serde_json::to_string(&Envelope { now_ms, request })
        .map_err(|e| Error::RustError(e.to_string()))?;
    post(env, org, "/op", &envelope).await
}

/// Sends a payment method request to the organization's Durable Object.
pub async fn payment_method(
    env: &Env,
    org: &str,
    now_ms: i64,
    op: PaymentMethodOp,
) -> Result<Response> {
    let body = serde_json::to_string(&PaymentMethodRequest { now_ms, op })
        .map_err(|e| Error::RustError(e.to_string()))?;
    post(env, org, PAYMENT_METHOD_PATH, &body).await
}

async fn post(env: &Env, org: &str, path: &str, body: &str) -> Result<Response> {
    let stub = env
        .durable_object("WALLET")?
        .id_from_name(org)?
        .get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(JsValue::from_str(body)));
    let request = Request::new_with_init(&format!("https://wallet.internal{path}"), &init)?;
    stub.fetch_with_request(request).await
}

/// A reply as the object's HTTP answer (JSON, `Retry-After` for 429).
pub fn response(reply: Reply) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    if let Some(seconds) = reply.retry_after {
        headers.set("retry-after", &seconds.to_string())?;
    }
    Ok(Response::ok(reply.body)?
        .with_status(reply.status)
        .with_headers(headers))
}
