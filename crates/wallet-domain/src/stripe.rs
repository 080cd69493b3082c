//! What this service reads from Stripe, as plain data: its configuration,
//! webhook signatures, the few fields of a PaymentIntent that decide a
//! purchase, and the events the webhook acts on. Pure; the Worker does the HTTP.
//!
//! Signatures are checked here rather than with `stripe_webhook::Webhook`:
//! that crate verifies and then parses every event into its typed model in one
//! function, which links Stripe's whole object graph into the Worker (about
//! 700 KB more gzipped, measured before wasm-opt; the budget is 500 KB). The
//! check below follows Stripe's scheme and is tested against that crate and
//! against Stripe's own Node library.
//!
//! PaymentIntents are read through the fields this service needs rather than
//! the SDK's full `stripe_shared::PaymentIntent`: that type requires every
//! field of the API version it was generated for, so a payload rendered for
//! another version, or by the local emulator (localstripe omits
//! `amount_received`, `amount_capturable`, `confirmation_method`, …), would be
//! unreadable although it is genuine.

use crate::config::ConfigError;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::collections::BTreeMap;

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The development webhook secret (SPEC §5); refused outside development.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_local_dev";
/// Configured webhook secrets tried per delivery (rotation keeps two or three).
pub const MAX_WEBHOOK_SECRETS: usize = 4;
/// Longest Stripe object id, key or secret accepted.
const MAX_STRIPE_TEXT: usize = 255;

/// Metadata keys this service writes on every PaymentIntent it creates.
pub const META_ORG: &str = "org_id";
pub const META_PACK: &str = "pack_id";
pub const META_PURCHASE: &str = "purchase_id";

#[derive(Clone, PartialEq, Eq)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or localstripe in development.
    pub api_base: String,
    pub secret_key: String,
    /// Every secret a webhook signature may match (several while rotating).
    pub webhook_secrets: Vec<String>,
}

// Secrets stay out of logs.
impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish_non_exhaustive()
    }
}

impl StripeConfig {
    /// Reads `STRIPE_API_BASE`, `STRIPE_SECRET_KEY` and the comma-separated
    /// `STRIPE_WEBHOOK_SECRETS`. Plain `http://` bases (localstripe) and the
    /// development webhook secret are accepted only in development.
    pub fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
        development: bool,
    ) -> Result<StripeConfig, ConfigError> {
        let problem = |variable: &'static str, problem: &str| ConfigError {
            variable,
            problem: problem.to_string(),
        };
        let api_base = lookup("STRIPE_API_BASE")
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| DEFAULT_API_BASE.to_string());
        let local_http = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
            .iter()
            .any(|prefix| api_base.starts_with(prefix));
        let well_formed = api_base.len() <= MAX_STRIPE_TEXT
            && !api_base.contains(['?', '#', ' '])
            && (api_base.starts_with("https://") || (development && local_http));
        if !well_formed {
            return Err(problem(
                "STRIPE_API_BASE",
                "must be an https:// URL (http://127.0.0.1:PORT only in development)",
            ));
        }

        let secret_key = lookup("STRIPE_SECRET_KEY")
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        if !(secret_key.starts_with("sk_") || secret_key.starts_with("rk_"))
            || secret_key.len() > MAX_STRIPE_TEXT
            || !secret_key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(problem(
                "STRIPE_SECRET_KEY",
                "must be a Stripe secret or restricted key (sk_… or rk_…)",
            ));
        }

        let webhook_secrets = webhook_secrets(lookup("STRIPE_WEBHOOK_SECRETS"), development)?;
        Ok(StripeConfig {
            api_base,
            secret_key,
            webhook_secrets,
        })
    }
}

/// `STRIPE_WEBHOOK_SECRETS`: 1 to 4 comma-separated secrets (rotation);
/// the development secret only in development.
fn webhook_secrets(text: Option<String>, development: bool) -> Result<Vec<String>, ConfigError> {
    let problem = |problem: &str| ConfigError {
        variable: "STRIPE_WEBHOOK_SECRETS",
        problem: problem.to_string(),
    };
    let webhook_secrets: Vec<String> = text
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if webhook_secrets.is_empty() || webhook_secrets.len() > MAX_WEBHOOK_SECRETS {
        return Err(problem(
            "must list 1 to 4 webhook signing secrets, comma-separated",
        ));
    }
    if webhook_secrets
        .iter()
        .any(|s| s.len() > MAX_STRIPE_TEXT || !s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(problem("secrets must be printable ASCII without spaces"));
    }
    if !development && webhook_secrets.iter().any(|s| s == DEV_WEBHOOK_SECRET) {
        return Err(problem(
            "the development secret is refused outside development",
        ));
    }
    Ok(webhook_secrets)
}

/// How far a signature's timestamp may be from now, either way.
pub const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;
/// Longer `Stripe-Signature` headers are refused unread.
const MAX_SIGNATURE_HEADER_CHARS: usize = 2048;
/// `v1` signatures compared per header, at most (Stripe sends one per secret).
const MAX_V1_SIGNATURES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No usable `t=` and `v1=` in the header.
    Malformed,
    /// No `v1` signature matches the body under any configured secret.
    NoMatch,
    /// A signature matches, but its timestamp is outside the tolerance.
    Stale,
}

/// Checks a `Stripe-Signature` header (`t=<unix seconds>,v1=<hex>,…`) over
/// the raw body: accepted when some `v1` equals HMAC-SHA256(secret,
/// "<t>.<body>") for some configured secret, compared in constant time, and
/// `t` is within [`SIGNATURE_TOLERANCE_SECONDS`] of `now_seconds`. Other
/// schemes (`v0`) and unknown elements are ignored, as Stripe specifies.
pub fn verify_signature(
    body: &[u8],
    header: &str,
    secrets: &[String],
    now_seconds: i64,
) -> Result<(), SignatureError> {
    if header.len() > MAX_SIGNATURE_HEADER_CHARS {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for element in header.split(',') {
        let Some((key, value)) = element.split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                let digits = !value.is_empty()
                    && value.len() <= 12
                    && value.bytes().all(|b| b.is_ascii_digit());
                if timestamp.is_some() || !digits {
                    return Err(SignatureError::Malformed);
                }
                timestamp = value.parse().ok();
            }
            // A signature that is not hex cannot match; it is skipped.
            "v1" if signatures.len() < MAX_V1_SIGNATURES => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return Err(SignatureError::Malformed);
    };
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let signed_prefix = format!("{timestamp}.");
    let matched = secrets.iter().any(|secret| {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(signed_prefix.as_bytes());
        mac.update(body);
        // `verify_slice` compares in constant time.
        signatures
            .iter()
            .any(|signature| mac.clone().verify_slice(signature).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    if (now_seconds - timestamp).abs() > SIGNATURE_TOLERANCE_SECONDS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// A PaymentIntent's status. `Other` keeps a status this code predates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    Canceled,
    Succeeded,
    Other(String),
}

impl IntentStatus {
    pub fn parse(text: &str) -> IntentStatus {
        match text {
            "requires_payment_method" => IntentStatus::RequiresPaymentMethod,
            "requires_confirmation" => IntentStatus::RequiresConfirmation,
            "requires_action" => IntentStatus::RequiresAction,
            "processing" => IntentStatus::Processing,
            "requires_capture" => IntentStatus::RequiresCapture,
            "canceled" => IntentStatus::Canceled,
            "succeeded" => IntentStatus::Succeeded,
            other => IntentStatus::Other(other.to_string()),
        }
    }
}

/// The fields of a PaymentIntent that decide a purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentState {
    pub id: String,
    pub status: IntentStatus,
    /// What was asked for, in cents of `currency`.
    pub amount_cents: i64,
    /// What Stripe actually collected; `None` when the payload does not say.
    pub amount_received_cents: Option<i64>,
    /// Lowercase ISO code, as Stripe writes it.
    pub currency: String,
    pub client_secret: Option<String>,
    /// The last attempt's decline code (or error code when it has none).
    pub decline_code: Option<String>,
    /// The Stripe customer charged (`customer`), when the payload names one.
    #[serde(default)]
    pub customer: Option<String>,
    /// Our metadata: which organization, pack and purchase it pays for.
    pub org_id: Option<String>,
    pub pack_id: Option<String>,
    pub purchase_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, or not the object expected.
    Malformed(String),
    /// A field is missing or out of bounds.
    Invalid(&'static str),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Malformed(detail) => write!(f, "malformed Stripe payload: {detail}"),
            ParseError::Invalid(field) => write!(f, "Stripe payload has an invalid {field}"),
        }
    }
}

#[derive(Deserialize)]
struct RawIntent {
    id: String,
    status: String,
    amount: i64,
    #[serde(default)]
    amount_received: Option<i64>,
    currency: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    last_payment_error: Option<RawPaymentError>,
    /// An id, or the charge itself when expanded (localstripe always expands).
    #[serde(default)]
    latest_charge: Option<Value>,
    /// An id, or the customer itself when expanded.
    #[serde(default)]
    customer: Option<Value>,
}

#[derive(Deserialize)]
struct RawPaymentError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
}

fn is_stripe_id(text: &str, prefix: &str) -> bool {
    text.len() > prefix.len()
        && text.len() <= MAX_STRIPE_TEXT
        && text.starts_with(prefix)
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A short code such as `card_declined`: `[a-z0-9_]`, bounded.
fn code_text(text: Option<String>) -> Option<String> {
    text.filter(|t| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// A metadata value of ours: bounded printable text.
fn meta_text(metadata: &BTreeMap<String, Value>, key: &str) -> Option<String> {
    metadata
        .get(key)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
}

impl IntentState {
    /// Reads a PaymentIntent object (an API response or an event's `data.object`).
    pub fn from_value(value: Value) -> Result<IntentState, ParseError> {
        let raw: RawIntent =
            serde_json::from_value(value).map_err(|e| ParseError::Malformed(e.to_string()))?;
        if !is_stripe_id(&raw.id, "pi_") {
            return Err(ParseError::Invalid("id"));
        }
        if raw.amount < 0 || raw.amount_received.is_some_and(|a| a < 0) {
            return Err(ParseError::Invalid("amount"));
        }
        if raw.currency.len() != 3 || !raw.currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(ParseError::Invalid("currency"));
        }
        let amount_received_cents = raw
            .amount_received
            .or_else(|| raw.latest_charge.as_ref().and_then(captured_amount));
        let metadata = raw.metadata.unwrap_or_default();
        let decline_code = raw
            .last_payment_error
            .and_then(|e| code_text(e.decline_code).or(code_text(e.code)));
        Ok(IntentState {
            id: raw.id,
            status: IntentStatus::parse(&raw.status),
            amount_cents: raw.amount,
            amount_received_cents,
            currency: raw.currency,
            client_secret: raw
                .client_secret
                .filter(|s| s.len() <= MAX_STRIPE_TEXT && s.bytes().all(|b| b.is_ascii_graphic())),
            decline_code,
            customer: expandable_id(raw.customer.as_ref(), "cus_"),
            org_id: meta_text(&metadata, META_ORG),
            pack_id: meta_text(&metadata, META_PACK),
            purchase_id: meta_text(&metadata, META_PURCHASE),
        })
    }

    pub fn from_json(bytes: &[u8]) -> Result<IntentState, ParseError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ParseError::Malformed(e.to_string()))?;
        IntentState::from_value(value)
    }
}

/// What an expanded, succeeded and captured charge collected. Only used when
/// the PaymentIntent itself omits `amount_received` (the local emulator);
/// Stripe always sends it.
fn captured_amount(charge: &Value) -> Option<i64> {
    let charge = charge.as_object()?;
    let succeeded = charge.get("status").and_then(Value::as_str) == Some("succeeded");
    let captured = charge.get("captured").and_then(Value::as_bool) == Some(true);
    if !succeeded || !captured {
        return None;
    }
    charge
        .get("amount_captured")
        .or_else(|| charge.get("amount"))
        .and_then(Value::as_i64)
        .filter(|a| *a >= 0)
}

/// A webhook event this service acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeEvent {
    /// `payment_intent.*`: the PaymentIntent as of the event.
    PaymentIntent(IntentState),
    /// `charge.dispute.created`.
    DisputeCreated {
        dispute_id: String,
        payment_intent_id: Option<String>,
    },
    /// `charge.refunded`: the charge's cumulative refunded amount.
    ChargeRefunded(ChargeRefund),
    /// `charge.dispute.closed`, with the dispute's final status.
    DisputeClosed {
        dispute_id: String,
        payment_intent_id: Option<String>,
        outcome: DisputeOutcome,
    },
    /// Any other type: acknowledged, nothing done.
    Ignored,
}

/// A charge's refunds as of a `charge.refunded` event. Stripe sends the
/// cumulative `amount_refunded`, so a repeated or reordered delivery carries
/// the whole truth and applying it again changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRefund {
    pub charge_id: String,
    pub payment_intent_id: Option<String>,
    /// What the charge was for, and what has been refunded of it so far, in
    /// cents of `currency`.
    pub amount_cents: i64,
    pub amount_refunded_cents: i64,
    pub currency: String,
}

/// How a dispute ended, as `charge.dispute.closed` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeOutcome {
    /// The bank decided for us: the money is back.
    Won,
    /// The bank decided for the cardholder.
    Lost,
    /// Any other final status (`warning_closed`, …): nothing is given back.
    Other,
}

impl DisputeOutcome {
    pub fn parse(status: &str) -> DisputeOutcome {
        match status {
            "won" => DisputeOutcome::Won,
            "lost" => DisputeOutcome::Lost,
            _ => DisputeOutcome::Other,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            DisputeOutcome::Won => "won",
            DisputeOutcome::Lost => "lost",
            DisputeOutcome::Other => "closed",
        }
    }
}

/// Event types whose object is a PaymentIntent and that move a purchase.
pub const PAYMENT_INTENT_EVENTS: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.canceled",
];

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    type_: String,
    data: RawEventData,
}

#[derive(Deserialize)]
struct RawEventData {
    object: Value,
}

/// The id of an object field that may be an id or an expanded object.
fn expandable_id(value: Option<&Value>, prefix: &str) -> Option<String> {
    let id = match value? {
        Value::String(id) => id.as_str(),
        Value::Object(object) => object.get("id")?.as_str()?,
        _ => return None,
    };
    is_stripe_id(id, prefix).then(|| id.to_string())
}

fn dispute_id(object: &Value) -> Result<String, ParseError> {
    object
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_stripe_id(id, "dp_") || is_stripe_id(id, "du_"))
        .map(str::to_string)
        .ok_or(ParseError::Invalid("dispute id"))
}

/// Reads a Charge object of a `charge.refunded` event.
fn charge_refund(object: &Value) -> Result<ChargeRefund, ParseError> {
    let charge_id = object
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_stripe_id(id, "ch_") || is_stripe_id(id, "py_"))
        .ok_or(ParseError::Invalid("charge id"))?
        .to_string();
    let cents = |field: &'static str| {
        object
            .get(field)
            .and_then(Value::as_i64)
            .filter(|c| (0..=MAX_CHARGE_CENTS).contains(c))
            .ok_or(ParseError::Invalid(field))
    };
    let amount_cents = cents("amount")?;
    let amount_refunded_cents = cents("amount_refunded")?;
    if amount_refunded_cents > amount_cents {
        return Err(ParseError::Invalid("amount_refunded"));
    }
    let currency = object
        .get("currency")
        .and_then(Value::as_str)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()))
        .ok_or(ParseError::Invalid("currency"))?
        .to_string();
    Ok(ChargeRefund {
        charge_id,
        payment_intent_id: expandable_id(object.get("payment_intent"), "pi_"),
        amount_cents,
        amount_refunded_cents,
        currency,
    })
}

/// Stripe's largest charge is $999,999.99; anything above is not a real charge.
const MAX_CHARGE_CENTS: i64 = 99_999_999;

/// Reads a verified event body: `(event id, event)`.
pub fn parse_event(body: &[u8]) -> Result<(String, StripeEvent), ParseError> {
    let raw: RawEvent =
        serde_json::from_slice(body).map_err(|e| ParseError::Malformed(e.to_string()))?;
    if !is_stripe_id(&raw.id, "evt_") {
        return Err(ParseError::Invalid("event id"));
    }
    let event = if PAYMENT_INTENT_EVENTS.contains(&raw.type_.as_str()) {
        StripeEvent::PaymentIntent(IntentState::from_value(raw.data.object)?)
    } else if raw.type_ == "charge.dispute.created" {
        let object = raw.data.object;
        StripeEvent::DisputeCreated {
            dispute_id: dispute_id(&object)?,
            payment_intent_id: expandable_id(object.get("payment_intent"), "pi_"),
        }
    } else if raw.type_ == "charge.dispute.closed" {
        let object = raw.data.object;
        let status = object
            .get("status")
            .and_then(Value::as_str)
            .ok_or(ParseError::Invalid("dispute status"))?;
        StripeEvent::DisputeClosed {
            dispute_id: dispute_id(&object)?,
            payment_intent_id: expandable_id(object.get("payment_intent"), "pi_"),
            outcome: DisputeOutcome::parse(status),
        }
    } else if raw.type_ == "charge.refunded" {
        StripeEvent::ChargeRefunded(charge_refund(&raw.data.object)?)
    } else {
        StripeEvent::Ignored
    };
    Ok((raw.id, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)], development: bool) -> Result<StripeConfig, ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        StripeConfig::from_vars(|name| map.get(name).map(|v| v.to_string()), development)
    }

    #[test]
    fn configuration_rules() {
        let dev = config(
            &[
                ("STRIPE_API_BASE", "http://127.0.0.1:8420/"),
                ("STRIPE_SECRET_KEY", "sk_test_local"),
                ("STRIPE_WEBHOOK_SECRETS", " whsec_local_dev , whsec_next "),
            ],
            true,
        )
        .unwrap();
        assert_eq!(dev.api_base, "http://127.0.0.1:8420");
        assert_eq!(dev.webhook_secrets, ["whsec_local_dev", "whsec_next"]);
        assert!(
            !format!("{dev:?}").contains("sk_test_local"),
            "no secrets in Debug"
        );

        let production = config(
            &[
                ("STRIPE_SECRET_KEY", "sk_live_x"),
                ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(production.api_base, DEFAULT_API_BASE);

        // (variables, development, the variable blamed)
        type Case = (&'static [(&'static str, &'static str)], bool, &'static str);
        let bad: &[Case] = &[
            (
                &[("STRIPE_WEBHOOK_SECRETS", "whsec_a")],
                true,
                "STRIPE_SECRET_KEY",
            ),
            (
                &[
                    ("STRIPE_SECRET_KEY", "pk_test_x"),
                    ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
                ],
                true,
                "STRIPE_SECRET_KEY",
            ),
            (
                &[("STRIPE_SECRET_KEY", "sk_test_x")],
                true,
                "STRIPE_WEBHOOK_SECRETS",
            ),
            (
                &[
                    ("STRIPE_SECRET_KEY", "sk_test_x"),
                    ("STRIPE_WEBHOOK_SECRETS", "a,b,c,d,e"),
                ],
                true,
                "STRIPE_WEBHOOK_SECRETS",
            ),
            (
                &[
                    ("STRIPE_SECRET_KEY", "sk_live_x"),
                    ("STRIPE_WEBHOOK_SECRETS", "whsec_local_dev"),
                ],
                false,
                "STRIPE_WEBHOOK_SECRETS",
            ),
            (
                &[
                    ("STRIPE_API_BASE", "http://127.0.0.1:8420"),
                    ("STRIPE_SECRET_KEY", "sk_live_x"),
                    ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
                ],
                false,
                "STRIPE_API_BASE",
            ),
            (
                &[
                    ("STRIPE_API_BASE", "http://stripe.example"),
                    ("STRIPE_SECRET_KEY", "sk_test_x"),
                    ("STRIPE_WEBHOOK_SECRETS", "whsec_a"),
                ],
                true,
                "STRIPE_API_BASE",
            ),
        ];
        for (vars, development, variable) in bad {
            let err = config(vars, *development).unwrap_err();
            assert_eq!(err.variable, *variable, "{vars:?}");
        }
    }

    const NOW: i64 = 1_900_000_000;
    const BODY: &str = r#"{"id":"evt_1","object":"event","type":"customer.created"}"#;

    fn v1(body: &str, secret: &str, timestamp: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn secrets(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signature_rules() {
        let good = v1(BODY, "whsec_a", NOW);
        let other = v1(BODY, "whsec_b", NOW);
        let wrong = v1(BODY, "whsec_x", NOW);
        let old = NOW - SIGNATURE_TOLERANCE_SECONDS;
        let stale = NOW - SIGNATURE_TOLERANCE_SECONDS - 1;
        let future = NOW + SIGNATURE_TOLERANCE_SECONDS + 1;
        let mut flipped = good.clone();
        flipped.replace_range(0..1, if good.starts_with('0') { "1" } else { "0" });
        use SignatureError::*;
        let cases: Vec<(String, Result<(), SignatureError>)> = vec![
            (format!("t={NOW},v1={good}"), Ok(())),
            (format!("t={NOW},v1={other}"), Ok(())),
            (format!("t={NOW},v1={wrong},v1={good}"), Ok(())),
            (format!("v1={good},t={NOW}"), Ok(())),
            (format!("t={NOW},v1={good},v0={wrong},scheme=x"), Ok(())),
            (format!("t={old},v1={}", v1(BODY, "whsec_a", old)), Ok(())),
            (
                format!("t={stale},v1={}", v1(BODY, "whsec_a", stale)),
                Err(Stale),
            ),
            (
                format!("t={future},v1={}", v1(BODY, "whsec_a", future)),
                Err(Stale),
            ),
            (format!("t={stale},v1={good}"), Err(NoMatch)),
            (format!("t={NOW},v1={wrong}"), Err(NoMatch)),
            (format!("t={NOW},v1={flipped}"), Err(NoMatch)),
            (
                format!("t={NOW},v1={}", v1("{}", "whsec_a", NOW)),
                Err(NoMatch),
            ),
            (format!("t={NOW},v0={good}"), Err(Malformed)),
            (format!("t={NOW},v1=not-hex"), Err(Malformed)),
            (format!("v1={good}"), Err(Malformed)),
            (format!("t=soon,v1={good}"), Err(Malformed)),
            (format!("t=-{NOW},v1={good}"), Err(Malformed)),
            (format!("t={NOW},t={NOW},v1={good}"), Err(Malformed)),
            ("".to_string(), Err(Malformed)),
            ("garbage".to_string(), Err(Malformed)),
            (
                format!("t={NOW},v1={good},{}", "x".repeat(3000)),
                Err(Malformed),
            ),
        ];
        let configured = secrets(&["whsec_a", "whsec_b"]);
        for (header, expected) in cases {
            assert_eq!(
                verify_signature(BODY.as_bytes(), &header, &configured, NOW),
                expected,
                "{header}"
            );
        }
        let header = format!("t={NOW},v1={good}");
        assert_eq!(
            verify_signature(b"{\"id\":\"evt_2\"}", &header, &configured, NOW),
            Err(NoMatch),
            "a tampered body"
        );
        assert_eq!(
            verify_signature(BODY.as_bytes(), &header, &[], NOW),
            Err(NoMatch)
        );
    }

    /// The same verdicts as async-stripe's own verifier (which accepts when it
    /// returns the event, or fails only at parsing it, after both checks).
    #[test]
    fn agrees_with_the_async_stripe_webhook_crate() {
        use stripe_webhook::{Webhook, WebhookError};
        let timestamps = [
            NOW,
            NOW - 299,
            NOW - 300,
            NOW - 301,
            NOW + 300,
            NOW + 301,
            0,
        ];
        let signers = ["whsec_a", "whsec_b", "whsec_"];
        let mut checked = 0;
        for t in timestamps {
            for signer in signers {
                let sig = v1(BODY, signer, t);
                let other = v1(BODY, "whsec_z", t);
                let headers = [
                    format!("t={t},v1={sig}"),
                    format!("t={t},v1={other},v1={sig}"),
                    format!("t={t},v0={sig}"),
                    format!("t={t},v0={other},v1={sig}"),
                    format!("v1={sig},t={t}"),
                    format!("t={t},v1={}", &sig[..62]),
                    format!("t={t},v1={sig}x"),
                    Webhook::generate_test_header(BODY, signer, Some(t)),
                ];
                for header in headers {
                    for body in [BODY, "{}"] {
                        let ours =
                            verify_signature(body.as_bytes(), &header, &secrets(&["whsec_a"]), NOW)
                                .is_ok();
                        let theirs = matches!(
                            Webhook::construct_event_with_timestamp(body, &header, "whsec_a", NOW),
                            Ok(_) | Err(WebhookError::BadParse(_))
                        );
                        assert_eq!(ours, theirs, "{header} over {body}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 7 * 3 * 8 * 2);
    }

    fn stripe_intent() -> Value {
        // Trimmed from a real API response (2025 API versions).
        json!({
            "id": "pi_3Q", "object": "payment_intent", "amount": 5000, "amount_received": 5000,
            "currency": "usd", "status": "succeeded", "client_secret": "pi_3Q_secret_abc",
            "latest_charge": "ch_3Q", "last_payment_error": null,
            "metadata": {"org_id": "org_1", "pack_id": "team", "purchase_id": "pur_0123456789abcdef01234567"}
        })
    }

    #[test]
    fn reads_a_stripe_payment_intent() {
        let state = IntentState::from_value(stripe_intent()).unwrap();
        assert_eq!(state.status, IntentStatus::Succeeded);
        assert_eq!(
            (state.amount_cents, state.amount_received_cents),
            (5000, Some(5000))
        );
        assert_eq!(state.org_id.as_deref(), Some("org_1"));
        assert_eq!(state.pack_id.as_deref(), Some("team"));
        assert_eq!(
            state.purchase_id.as_deref(),
            Some("pur_0123456789abcdef01234567")
        );
    }

    #[test]
    fn reads_the_emulator_payment_intent() {
        // localstripe: no amount_received, the charge expanded, no decline_code.
        let succeeded = json!({
            "id": "pi_vrL7", "amount": 1000, "currency": "usd", "status": "succeeded",
            "capture_method": "automatic_async", "metadata": {"org_id": "o1"},
            "latest_charge": {"id": "ch_1", "amount": 1000, "captured": true, "status": "succeeded"}
        });
        let state = IntentState::from_value(succeeded).unwrap();
        assert_eq!(state.amount_received_cents, Some(1000));
        let failed = json!({
            "id": "pi_x", "amount": 1000, "currency": "usd", "status": "requires_payment_method",
            "metadata": {}, "last_payment_error": {"charge": "ch_2", "code": "card_declined", "message": "…"},
            "latest_charge": {"id": "ch_2", "amount": 1000, "captured": true, "status": "failed"}
        });
        let state = IntentState::from_value(failed).unwrap();
        assert_eq!(
            state.amount_received_cents, None,
            "a failed charge collected nothing"
        );
        assert_eq!(state.decline_code.as_deref(), Some("card_declined"));
        assert_eq!(state.status, IntentStatus::RequiresPaymentMethod);
    }

    #[test]
    fn prefers_the_decline_code_and_bounds_what_it_keeps() {
        let mut value = stripe_intent();
        value["status"] = json!("requires_payment_method");
        value["last_payment_error"] =
            json!({"code": "card_declined", "decline_code": "insufficient_funds"});
        value["metadata"]["org_id"] = json!("x".repeat(200));
        let state = IntentState::from_value(value).unwrap();
        assert_eq!(state.decline_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(state.org_id, None, "oversized metadata is not ours");
        for (field, bad) in [
            ("id", json!("ch_1")),
            ("amount", json!(-1)),
            ("currency", json!("USD")),
        ] {
            let mut value = stripe_intent();
            value[field] = bad;
            assert!(IntentState::from_value(value).is_err(), "{field}");
        }
    }

    #[test]
    fn parses_the_events_it_acts_on() {
        let body = |type_: &str, object: Value| {
            serde_json::to_vec(&json!({"id": "evt_1", "object": "event", "type": type_,
                "data": {"object": object}}))
            .unwrap()
        };
        let (id, event) = parse_event(&body("payment_intent.succeeded", stripe_intent())).unwrap();
        assert_eq!(id, "evt_1");
        assert!(matches!(event, StripeEvent::PaymentIntent(s) if s.id == "pi_3Q"));

        let dispute = json!({"id": "dp_1", "object": "dispute", "amount": 5000,
            "charge": "ch_3Q", "payment_intent": "pi_3Q", "status": "needs_response"});
        assert_eq!(
            parse_event(&body("charge.dispute.created", dispute))
                .unwrap()
                .1,
            StripeEvent::DisputeCreated {
                dispute_id: "dp_1".into(),
                payment_intent_id: Some("pi_3Q".into())
            }
        );
        let expanded = json!({"id": "dp_2", "payment_intent": {"id": "pi_9"}});
        assert!(matches!(
            parse_event(&body("charge.dispute.created", expanded)).unwrap().1,
            StripeEvent::DisputeCreated { payment_intent_id: Some(p), .. } if p == "pi_9"
        ));
        assert_eq!(
            parse_event(&body("customer.created", json!({"id": "cus_1"})))
                .unwrap()
                .1,
            StripeEvent::Ignored
        );
        assert!(parse_event(b"{}").is_err());
        assert!(parse_event(&body("payment_intent.succeeded", json!({"id": "pi_1"}))).is_err());
    }
}
