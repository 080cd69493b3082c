//! AI spending: debits (single and batched), holds, captures and releases.
//! A replay of a debit or hold was answered before any of this runs.

use super::{DebitTotals, OpRow, Reply, Step, StoredAnswer, StoredReply, Write};
use crate::api::{hold_json, ApiError, BatchSlot, CaptureBody, DebitBody, HoldBody};
use crate::wallet::{price_usage, seq_of, HoldPricing, PricedUsage};
use crate::{Credits, DebitRequest, HoldRequest, Rejection};
use serde_json::json;
use std::collections::HashMap;

/// Decides one debit (already known not to be a replay) and records it.
/// A debit by usage is priced at the rate in force at the decision's instant.
pub(super) fn debit(
    s: &mut Step,
    idempotency_key: &str,
    fingerprint: &str,
    body: &DebitBody,
) -> Reply {
    let decided = match (&body.usage, body.amount) {
        (Some(usage), _) => {
            price_usage(&s.config.rate_card, usage, s.wallet.now()).and_then(|(amount, rate)| {
                let request = debit_request(body, amount);
                let priced = PricedUsage::of(usage, &rate);
                s.wallet.debit_usage(&request, priced, s.config)
            })
        }
        (None, amount) => {
            let request = debit_request(body, amount.unwrap_or(Credits::ZERO));
            s.wallet.debit(&request, s.config)
        }
    };
    match decided {
        Ok(entry) => {
            let totals = DebitTotals {
                spent_today: s.wallet.spent_today(),
                cap_remaining: s.wallet.cap_remaining(),
            };
            let text = totals.reply_text(&entry);
            s.d.writes.push(Write::Op(OpRow {
                seq: entry.seq,
                idempotency: Some((idempotency_key.to_string(), fingerprint.to_string())),
                status: 201,
                answer: Some(StoredAnswer::Debit(totals)),
                entry: Some(entry),
                created_at_ms: s.now.timestamp_millis(),
            }));
            s.d.entry_written = true;
            s.changed = true;
            Reply::text(201, text)
        }
        Err(r) => {
            s.cap_refused |= matches!(r, Rejection::DailyCapReached { .. });
            Reply::rejected(r, s.now)
        }
    }
}

fn debit_request(body: &DebitBody, amount: Credits) -> DebitRequest {
    DebitRequest {
        feature: body.feature.clone(),
        amount,
        user_id: body.user_id.clone(),
        project_id: body.project_id.clone(),
        metadata: body.metadata.clone(),
    }
}

/// Applies a batch in order; each item answers as a single debit would,
/// and a key repeated within the batch is a replay of its first use.
pub(super) fn batch(s: &mut Step, items: &[BatchSlot]) -> Reply {
    let mut seen: HashMap<&str, StoredReply> = HashMap::new();
    let mut out = String::with_capacity(items.len() * 400 + 16);
    out.push_str("{\"results\":[");
    for slot in items {
        match slot {
            BatchSlot::Invalid {
                idempotency_key,
                status,
                error,
            } => {
                let body = json!({ "error": error }).to_string();
                push_batch_result(&mut out, idempotency_key.as_deref(), *status, &body);
            }
            BatchSlot::Debit {
                idempotency_key,
                fingerprint,
                body,
            } => {
                let (status, text) = batch_debit(s, &mut seen, idempotency_key, fingerprint, body);
                push_batch_result(&mut out, Some(idempotency_key), status, &text);
            }
        }
    }
    out.push_str("]}");
    Reply::text(200, out)
}

/// One debit of a batch: the answer of its key's first use (earlier in the
/// batch or stored), or the debit decided now.
fn batch_debit<'a>(
    s: &mut Step,
    seen: &mut HashMap<&'a str, StoredReply>,
    idempotency_key: &'a str,
    fingerprint: &str,
    body: &DebitBody,
) -> (u16, String) {
    let earlier = seen
        .get(idempotency_key)
        .or_else(|| s.loaded.replies.get(idempotency_key));
    match earlier {
        Some(first) if first.fingerprint == fingerprint => (first.status, first.response.clone()),
        Some(_) => {
            let err = ApiError::IdempotencyKeyReused;
            (err.status(), err.body().to_string())
        }
        None => {
            let reply = debit(s, idempotency_key, fingerprint, body);
            if reply.status < 300 {
                let first = StoredReply {
                    fingerprint: fingerprint.to_string(),
                    status: reply.status,
                    response: reply.body.clone(),
                };
                seen.insert(idempotency_key, first);
            }
            (reply.status, reply.body)
        }
    }
}

/// Appends one batch item's result: its key, status, and the entry or the
/// error. The stored texts are spliced in as they are, not parsed again.
fn push_batch_result(out: &mut String, key: Option<&str>, status: u16, body: &str) {
    if !out.ends_with('[') {
        out.push(',');
    }
    out.push_str("{\"idempotency_key\":");
    out.push_str(&serde_json::to_string(&key).expect("keys serialize"));
    out.push_str(",\"status\":");
    out.push_str(&status.to_string());
    if status < 300 {
        out.push_str(",\"entry\":");
        out.push_str(body);
    } else {
        // Error bodies are exactly {"error":{...}} (ApiError::body).
        let error = body
            .strip_prefix("{\"error\":")
            .and_then(|b| b.strip_suffix('}'));
        out.push_str(",\"error\":");
        out.push_str(error.unwrap_or("null"));
    }
    out.push('}');
}

/// Places a hold of `amount`, or of its `usage_estimate` priced at the
/// rate in force now (the rate is kept with the hold for its capture).
pub(super) fn place_hold(
    s: &mut Step,
    idempotency_key: &str,
    fingerprint: &str,
    body: &HoldBody,
) -> Reply {
    let mut request = HoldRequest {
        feature: body.feature.clone(),
        amount: body.amount.unwrap_or(Credits::ZERO),
        user_id: body.user_id.clone(),
        project_id: body.project_id.clone(),
        ttl_seconds: body
            .ttl_seconds
            .unwrap_or(s.config.hold_ttl_default_seconds),
    };
    let placed = match &body.usage_estimate {
        Some(estimate) => price_usage(&s.config.rate_card, &estimate.as_usage(), s.wallet.now())
            .and_then(|(amount, rate)| {
                request.amount = amount;
                let pricing = HoldPricing {
                    estimate: estimate.clone(),
                    rate,
                };
                s.wallet.place_priced_hold(&request, pricing, s.config)
            }),
        None => s.wallet.place_hold(&request, s.config),
    };
    match placed {
        Ok(hold) => {
            let text = hold_json(&hold, None).to_string();
            s.d.writes.push(Write::Hold(hold.clone()));
            s.d.writes.push(Write::Op(OpRow {
                seq: seq_of(&hold.id).expect("hold ids carry their seq"),
                idempotency: Some((idempotency_key.to_string(), fingerprint.to_string())),
                status: 201,
                answer: Some(StoredAnswer::Text(text.clone())),
                entry: None,
                created_at_ms: s.now.timestamp_millis(),
            }));
            s.changed = true;
            Reply::text(201, text)
        }
        Err(r) => {
            s.cap_refused |= matches!(r, Rejection::DailyCapReached { .. });
            Reply::rejected(r, s.now)
        }
    }
}

pub(super) fn capture(s: &mut Step, hold_id: &str, body: &CaptureBody) -> Reply {
    let closed = s.closed_hold(hold_id);
    let captured = match (&body.usage, body.amount) {
        (Some(usage), _) => s.wallet.capture_usage(hold_id, usage, closed.as_ref()),
        (None, amount) => {
            s.wallet
                .capture(hold_id, amount.unwrap_or(Credits::ZERO), closed.as_ref())
        }
    };
    match captured {
        Ok((hold, entry)) => {
            let text = hold_json(&hold, entry.as_ref()).to_string();
            s.d.writes.push(Write::Hold(hold));
            if let Some(entry) = entry {
                s.d.writes.push(Write::Op(OpRow {
                    seq: entry.seq,
                    idempotency: None,
                    status: 200,
                    answer: Some(StoredAnswer::Text(text.clone())),
                    entry: Some(entry),
                    created_at_ms: s.now.timestamp_millis(),
                }));
                s.d.entry_written = true;
            }
            s.changed = true;
            Reply::text(200, text)
        }
        Err(Rejection::HoldAlreadyClosed { .. }) => {
            let hold = closed.expect("only a stored hold is already closed");
            match &s.loaded.first_capture_response {
                Some(body) if hold.capture_entry_id.is_some() => Reply::text(200, body.clone()),
                _ => Reply::json(200, &hold_json(&hold, None)),
            }
        }
        Err(r) => Reply::rejected(r, s.now),
    }
}

pub(super) fn release(s: &mut Step, hold_id: &str) -> Reply {
    let closed = s.closed_hold(hold_id);
    match s.wallet.release(hold_id, closed.as_ref()) {
        Ok(hold) => {
            let reply = Reply::json(200, &hold_json(&hold, None));
            s.d.writes.push(Write::Hold(hold));
            s.changed = true;
            reply
        }
        Err(Rejection::HoldAlreadyClosed { .. }) => Reply::json(
            200,
            &hold_json(&closed.expect("only a stored hold is already closed"), None),
        ),
        Err(r) => Reply::rejected(r, s.now),
    }
}
