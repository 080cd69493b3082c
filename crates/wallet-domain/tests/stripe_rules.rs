//! What is read from Stripe, at the edges of its bounds: configuration
//! (key and secret lengths, how many secrets), `Stripe-Signature` headers
//! (their length, how many `v1` are compared), PaymentIntents (ids, amounts,
//! codes, client secrets) and `charge.refunded` / dispute events.

use serde_json::{json, Value};
use std::collections::HashMap;
use wallet_domain::config::ConfigError;
use wallet_domain::events::signature_header;
use wallet_domain::stripe::{
    parse_event, verify_signature, DisputeOutcome, IntentState, ParseError, SignatureError,
    StripeConfig, StripeEvent,
};

fn config(vars: &[(&str, &str)]) -> Result<StripeConfig, ConfigError> {
    let map: HashMap<&str, &str> = vars.iter().copied().collect();
    StripeConfig::from_vars(|name| map.get(name).map(|v| v.to_string()), false)
}

fn with_key(key: &str) -> Result<StripeConfig, ConfigError> {
    config(&[
        ("STRIPE_SECRET_KEY", key),
        ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
    ])
}

fn with_secrets(secrets: &str) -> Result<StripeConfig, ConfigError> {
    config(&[
        ("STRIPE_SECRET_KEY", "sk_live_x"),
        ("STRIPE_WEBHOOK_SECRETS", secrets),
    ])
}

#[test]
fn a_secret_key_is_at_most_255_visible_characters() {
    let longest = format!("sk_{}", "x".repeat(252));
    assert_eq!(with_key(&longest).unwrap().secret_key, longest);
    let too_long = format!("sk_{}", "x".repeat(253));
    for bad in [too_long.as_str(), "sk_live x", "sk_live\u{7f}x"] {
        assert_eq!(
            with_key(bad).unwrap_err().variable,
            "STRIPE_SECRET_KEY",
            "{bad:?}"
        );
    }
}

#[test]
fn webhook_secrets_are_1_to_4_of_at_most_255_visible_characters() {
    let four = with_secrets("whsec_a,whsec_b,whsec_c,whsec_d").unwrap();
    assert_eq!(four.webhook_secrets.len(), 4);
    let longest = format!("whsec_{}", "x".repeat(249));
    assert_eq!(with_secrets(&longest).unwrap().webhook_secrets, [longest]);
    let too_long = format!("whsec_{}", "x".repeat(250));
    for bad in [
        "whsec_a,whsec_b,whsec_c,whsec_d,whsec_e",
        too_long.as_str(),
        "whsec a",
    ] {
        assert_eq!(
            with_secrets(bad).unwrap_err().variable,
            "STRIPE_WEBHOOK_SECRETS",
            "{bad}"
        );
    }
}

#[test]
fn a_configuration_shows_where_it_points_and_never_its_secrets() {
    let shown = format!("{:?}", with_secrets("whsec_a,whsec_b").unwrap());
    assert!(shown.contains("https://api.stripe.com"), "{shown}");
    assert!(shown.contains("webhook_secrets: 2"), "{shown}");
    assert!(
        !shown.contains("sk_live_x") && !shown.contains("whsec_a"),
        "{shown}"
    );
}

const SECRET: &str = "whsec_test";
const BODY: &str = r#"{"id":"evt_1"}"#;
const T: i64 = 1_900_000_000;

/// The `v1=…` element of a valid signature of `BODY` at `T`.
fn valid_v1() -> String {
    let header = signature_header(SECRET.as_bytes(), T, BODY);
    header.split(',').nth(1).unwrap().to_string()
}

fn verify(header: &str) -> Result<(), SignatureError> {
    verify_signature(BODY.as_bytes(), header, &[SECRET.to_string()], T)
}

#[test]
fn a_signature_header_of_2048_characters_is_read_and_longer_refused() {
    let header = format!("t={T},{}", valid_v1());
    assert_eq!(verify(&header), Ok(()));
    let padded = |len: usize| {
        let mut h = format!("{header},x=");
        let pad = len - h.len();
        h.push_str(&"0".repeat(pad));
        assert_eq!(h.len(), len);
        h
    };
    assert_eq!(verify(&padded(2048)), Ok(()));
    assert_eq!(verify(&padded(2049)), Err(SignatureError::Malformed));
}

#[test]
fn at_most_eight_v1_signatures_are_compared() {
    let wrong = format!("v1={}", "ab".repeat(32));
    let with_match_at = |position: usize| {
        let mut elements = vec![format!("t={T}")];
        elements.extend((1..position).map(|_| wrong.clone()));
        elements.push(valid_v1());
        elements.join(",")
    };
    assert_eq!(verify(&with_match_at(8)), Ok(()));
    assert_eq!(verify(&with_match_at(9)), Err(SignatureError::NoMatch));
}

fn intent(edit: impl FnOnce(&mut Value)) -> Result<IntentState, ParseError> {
    let mut value = json!({
        "id": "pi_1",
        "status": "requires_payment_method",
        "amount": 1000,
        "amount_received": 0,
        "currency": "usd",
        "client_secret": "pi_1_secret_x",
        "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"},
        "customer": "cus_1",
        "metadata": {"org_id": "acme"},
    });
    edit(&mut value);
    IntentState::from_value(value)
}

#[test]
fn payment_intents_are_read_within_their_bounds() {
    let read = intent(|_| {}).unwrap();
    assert_eq!(read.amount_received_cents, Some(0));
    assert_eq!(read.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(read.client_secret.as_deref(), Some("pi_1_secret_x"));
    // Nothing asked is a valid amount; less than nothing is not.
    assert_eq!(intent(|v| v["amount"] = json!(0)).unwrap().amount_cents, 0);
    for (field, bad) in [("amount", -1), ("amount_received", -1)] {
        let err = intent(|v| v[field] = json!(bad)).unwrap_err();
        assert_eq!(err, ParseError::Invalid("amount"));
        assert_eq!(err.to_string(), "Stripe payload has an invalid amount");
    }
    let err = intent(|v| v["id"] = json!("pi_")).unwrap_err();
    assert_eq!(err, ParseError::Invalid("id"));
    let err = IntentState::from_json(b"[").unwrap_err();
    assert!(
        err.to_string().starts_with("malformed Stripe payload: "),
        "{err}"
    );
}

#[test]
fn decline_codes_are_short_snake_case_else_the_error_code() {
    let decline = |code: &str| {
        intent(|v| v["last_payment_error"]["decline_code"] = json!(code))
            .unwrap()
            .decline_code
    };
    let longest = "d".repeat(64);
    assert_eq!(decline(&longest), Some(longest.clone()));
    for odd in ["Do Not Honor", "d".repeat(65).as_str(), ""] {
        assert_eq!(decline(odd).as_deref(), Some("card_declined"), "{odd:?}");
    }
}

#[test]
fn a_client_secret_is_kept_only_when_it_is_plain_and_bounded() {
    let secret = |s: &str| {
        intent(|v| v["client_secret"] = json!(s))
            .unwrap()
            .client_secret
    };
    let longest = "s".repeat(255);
    assert_eq!(secret(&longest), Some(longest.clone()));
    assert_eq!(secret(&"s".repeat(256)), None);
    assert_eq!(secret("pi_1 secret"), None);
}

fn event(kind: &str, object: Value) -> Result<StripeEvent, ParseError> {
    let body = json!({"id": "evt_1", "type": kind, "data": {"object": object}});
    parse_event(body.to_string().as_bytes()).map(|(_, e)| e)
}

fn charge(edit: impl FnOnce(&mut Value)) -> Result<StripeEvent, ParseError> {
    let mut object = json!({
        "id": "ch_1",
        "amount": 1000,
        "amount_refunded": 1000,
        "currency": "usd",
        "payment_intent": "pi_1",
    });
    edit(&mut object);
    event("charge.refunded", object)
}

#[test]
fn a_refunded_charge_is_read_within_its_bounds() {
    let Ok(StripeEvent::ChargeRefunded(refund)) = charge(|_| {}) else {
        panic!("a whole refund is read")
    };
    assert_eq!(
        (refund.amount_cents, refund.amount_refunded_cents),
        (1000, 1000)
    );
    assert_eq!(refund.payment_intent_id.as_deref(), Some("pi_1"));
    // Payments of other methods have py_ charges.
    assert!(charge(|c| c["id"] = json!("py_1")).is_ok());
    assert_eq!(
        charge(|c| c["amount_refunded"] = json!(1001)),
        Err(ParseError::Invalid("amount_refunded"))
    );
    assert!(charge(|c| c["amount_refunded"] = json!(999)).is_ok());
    for currency in ["US", "usdd", "USD"] {
        assert_eq!(
            charge(|c| c["currency"] = json!(currency)),
            Err(ParseError::Invalid("currency")),
            "{currency}"
        );
    }
}

#[test]
fn a_closed_dispute_says_who_won() {
    for (status, outcome, name) in [
        ("won", DisputeOutcome::Won, "won"),
        ("lost", DisputeOutcome::Lost, "lost"),
        ("warning_closed", DisputeOutcome::Other, "closed"),
    ] {
        assert_eq!(DisputeOutcome::parse(status), outcome);
        assert_eq!(outcome.as_str(), name);
        let closed = event(
            "charge.dispute.closed",
            json!({"id": "dp_1", "status": status, "payment_intent": "pi_1"}),
        );
        let Ok(StripeEvent::DisputeClosed { outcome: read, .. }) = closed else {
            panic!("{closed:?}")
        };
        assert_eq!(read, outcome);
    }
}
