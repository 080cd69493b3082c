//! Delivering events: the producer (the organization's Durable Object names
//! itself on the `EVENTS` queue when events wait in its outbox) and the
//! consumer (this Worker's queue handler, which reads the organization's
//! undelivered events from its object, oldest first, and POSTs them one at
//! a time to `EVENTS_WEBHOOK_URL`, signed with `Wallet-Signature`).
//!
//! Order per organization: an event is sent only after every earlier one
//! was answered 2xx, so a receiver first sees them in order (duplicates
//! aside: delivery is at least once, receivers dedupe by `id`). Retries are
//! the queue's: a failed attempt is recorded on the event and the message is
//! retried with the event's backoff; the queue allows 100 retries, more than
//! 24 hours of it. An event is marked delivered only when the receiver said
//! so, so a message the queue loses is made again by the object.

use crate::settings::settings;
use crate::wallet_protocol;
use futures_util::future::{select, Either};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use wallet_core::api::OutboxRequest;
use wallet_core::events::{
    retry_delay_seconds, signature_header, DeliveryConfig, DELIVERY_BATCH, DELIVERY_TIMEOUT_SECONDS,
};
use worker::{
    console_error, console_log, event, AbortController, Context, Date, Delay, Env, Fetch, Headers,
    MessageBatch, MessageBuilder, MessageExt, Method, QueueRetryOptionsBuilder, Request,
    RequestInit, Result,
};

/// The queue binding.
const QUEUE: &str = "EVENTS";
/// Passes over an organization's outbox per message, so one busy
/// organization cannot hold a consumer forever; what is left is queued again.
const MAX_PASSES: usize = 8;
/// The delay before retrying a message whose organization could not be read.
const UNREACHABLE_RETRY_SECONDS: u32 = 10;

/// A delivery message: only the organization; its events are read from
/// its Durable Object, so the message carries no copy that could go stale.
#[derive(Serialize, Deserialize)]
pub struct EventsWaiting {
    pub org_id: String,
}

/// Puts a delivery message for `org_id` on the queue.
pub async fn enqueue(env: &Env, org_id: &str, delay_seconds: u32) -> Result<()> {
    let message = MessageBuilder::new(EventsWaiting {
        org_id: org_id.to_string(),
    });
    let message = if delay_seconds > 0 {
        message.delay_seconds(delay_seconds)
    } else {
        message
    };
    env.queue(QUEUE)?.send(message.build()).await
}

#[derive(Deserialize)]
struct Pending {
    events: Vec<(u64, String, u32)>,
}

#[derive(Deserialize)]
struct Attempts {
    attempts: u32,
}

/// How one organization's pass ended.
enum Outcome {
    /// Nothing is left to send.
    Done,
    /// The receiver refused or did not answer: retry after this delay.
    Failing { delay_seconds: u64 },
    /// More events than one message may send: queue the rest anew.
    More,
}

#[event(queue)]
async fn consume(batch: MessageBatch<EventsWaiting>, env: Env, _ctx: Context) -> Result<()> {
    let messages = batch.messages()?;
    let delivery = match settings(&env).map(|s| s.events.clone()) {
        Ok(Ok(Some(delivery))) => delivery,
        other => {
            // No receiver (any more): nothing to send; the events stay listed.
            if let Ok(Err(problem)) | Err(problem) = other {
                console_error!("event delivery is not configured: {problem}");
            }
            batch.ack_all();
            return Ok(());
        }
    };
    // One pass per organization, however many messages name it.
    let orgs: BTreeSet<String> = messages.iter().map(|m| m.body().org_id.clone()).collect();
    for org_id in orgs {
        let retry = match deliver(&env, &delivery, &org_id).await {
            Ok(Outcome::Done) => None,
            Ok(Outcome::More) => match enqueue(&env, &org_id, 0).await {
                Ok(()) => None,
                Err(err) => {
                    console_error!("re-queueing the events of {org_id} failed: {err}");
                    Some(UNREACHABLE_RETRY_SECONDS)
                }
            },
            Ok(Outcome::Failing { delay_seconds }) => Some(delay_seconds as u32),
            Err(err) => {
                console_error!("event delivery for {org_id} failed: {err}");
                Some(UNREACHABLE_RETRY_SECONDS)
            }
        };
        for message in messages.iter().filter(|m| m.body().org_id == org_id) {
            match retry {
                None => message.ack(),
                Some(delay) => message.retry_with_options(
                    &QueueRetryOptionsBuilder::new()
                        .with_delay_seconds(delay)
                        .build(),
                ),
            }
        }
    }
    Ok(())
}

/// Sends the organization's undelivered events in order, stopping at the
/// first that fails.
async fn deliver(env: &Env, delivery: &DeliveryConfig, org_id: &str) -> Result<Outcome> {
    for _ in 0..MAX_PASSES {
        let pending: Pending = ask(
            env,
            org_id,
            OutboxRequest::EventsPending {
                limit: DELIVERY_BATCH,
            },
        )
        .await?;
        if pending.events.is_empty() {
            return Ok(Outcome::Done);
        }
        for (seq, body, _) in &pending.events {
            match post(delivery, body).await {
                Ok(()) => {
                    ask::<Attempts>(env, org_id, OutboxRequest::EventDelivered { seq: *seq })
                        .await?;
                }
                Err(problem) => {
                    let failed: Attempts =
                        ask(env, org_id, OutboxRequest::EventFailed { seq: *seq }).await?;
                    let delay_seconds =
                        retry_delay_seconds(delivery.retry_base_seconds, failed.attempts.max(1));
                    console_log!(
                        "event {seq} of {org_id}: attempt {} failed ({problem}); retrying in {delay_seconds} s",
                        failed.attempts
                    );
                    return Ok(Outcome::Failing { delay_seconds });
                }
            }
        }
    }
    Ok(Outcome::More)
}

async fn ask<T: serde::de::DeserializeOwned>(
    env: &Env,
    org_id: &str,
    request: OutboxRequest,
) -> Result<T> {
    let now_ms = Date::now().as_millis() as i64;
    let mut response = wallet_protocol::call(env, org_id, now_ms, request).await?;
    if response.status_code() != 200 {
        return Err(worker::Error::RustError(format!(
            "the wallet answered {}",
            response.status_code()
        )));
    }
    response.json().await
}

/// One attempt: the stored body, signed now; 2xx within the timeout is success.
async fn post(delivery: &DeliveryConfig, body: &str) -> std::result::Result<(), String> {
    let t = (Date::now().as_millis() / 1000) as i64;
    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(|e| e.to_string());
    set("content-type", "application/json")?;
    set(
        "wallet-signature",
        &signature_header(&delivery.signing_secret, t, body),
    )?;
    set("user-agent", "ai-wallet-events/1")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let request = Request::new_with_init(&delivery.url, &init).map_err(|e| e.to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let exchange = async move {
        let response = Fetch::Request(request)
            .send_with_signal(&signal)
            .await
            .map_err(|e| e.to_string())?;
        // Only the status counts; the answer's body is never read.
        let status = response.status_code();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    let timeout = Delay::from(Duration::from_secs(DELIVERY_TIMEOUT_SECONDS));
    match select(Box::pin(exchange), Box::pin(timeout)).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            controller.abort();
            Err(format!("no answer within {DELIVERY_TIMEOUT_SECONDS} s"))
        }
    }
}
