//! The Worker ⇄ Durable Object protocol: an [`Envelope`] (the request time
//! and one `Command`) posted to the organization's object, answered with a
//! decision's [`Reply`] as an HTTP response.

use wallet_core::api::{Command, Envelope};
use wallet_core::decision::Reply;
use wasm_bindgen::JsValue;
use worker::{Env, Error, Headers, Method, Request, RequestInit, Response, Result};

/// Sends `command` to the organization's Durable Object; its answer is final.
pub async fn call(env: &Env, org: &str, now_ms: i64, command: Command) -> Result<Response> {
    let stub = env
        .durable_object("WALLET")?
        .id_from_name(org)?
        .get_stub()?;
    let envelope = serde_json::to_string(&Envelope { now_ms, command })
        .map_err(|e| Error::RustError(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(JsValue::from_str(&envelope)));
    let request = Request::new_with_init("https://wallet.internal/op", &init)?;
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
