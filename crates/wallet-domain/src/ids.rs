//! Every id this service derives, in one place: ids made from an
//! organization and a request (purchases, Stripe idempotency keys, events)
//! are digests, so a retry names the same thing before anything is stored;
//! ids made from a sequence number (entries, holds, audit records) carry it.
//!
//! Architecture Invariant: base layer; depends on nothing in this crate.

use sha2::{Digest, Sha256};

fn digest_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Hex digits of a purchase id after `pur_` (96 bits).
const PURCHASE_ID_HEX: usize = 24;

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

pub fn entry_id(seq: u64) -> String {
    format!("le_{seq:012}")
}

pub fn hold_id(seq: u64) -> String {
    format!("hold_{seq:012}")
}

/// Sequence number of an entry or hold id made by this module.
pub fn seq_of(id: &str) -> Option<u64> {
    let digits = id
        .strip_prefix("le_")
        .or_else(|| id.strip_prefix("hold_"))?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Hex digits of the organization part of an event id.
const ORG_HEX: usize = 16;

/// `evt_<16 hex of the organization>_<12-digit sequence>`: unique across
/// organizations (receivers dedupe by id), and one organization's ids sort
/// in the order its events happened.
pub fn event_id(org_id: &str, seq: u64) -> String {
    let digest = Sha256::new()
        .chain_update(b"ai-wallet events\0")
        .chain_update(org_id.as_bytes())
        .finalize();
    format!("evt_{}_{seq:012}", &hex::encode(digest)[..ORG_HEX])
}

/// The sequence number of an event id of `org_id`.
pub fn event_seq(org_id: &str, id: &str) -> Option<u64> {
    let (_, digits) = id.rsplit_once('_')?;
    let seq = (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse::<u64>().ok())
        .flatten()?;
    (event_id(org_id, seq) == id).then_some(seq)
}

/// Audit ids: `aud_` and the trail's own sequence number (12 digits).
pub fn audit_id(seq: u64) -> String {
    format!("aud_{seq:012}")
}
