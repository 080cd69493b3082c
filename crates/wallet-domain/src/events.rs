//! Outbound events: what happened to a wallet, recorded in the Durable
//! Object in the same transaction as the decision that caused it (the
//! outbox), delivered at least once and in order per organization to the
//! operator's receiver, signed like Stripe signs its webhooks.
//!
//! Also the alert rules that decide when a wallet event is due: the
//! low-balance alert fires once per crossing of its threshold and re-arms
//! when `available` is back at or above it; `wallet.depleted` fires when
//! `available` reaches zero and re-arms when credits return;
//! `wallet.daily_cap_reached` fires the first time in a UTC day.

pub use crate::ids::{event_id, event_seq};
use crate::money::Credits;
use crate::paging::{list_limit, Invalid};
use crate::time::rfc3339;
use chrono::{DateTime, NaiveDate, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

/// The event types, as receivers see them in `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "wallet.low_balance")]
    LowBalance,
    #[serde(rename = "wallet.depleted")]
    Depleted,
    #[serde(rename = "wallet.daily_cap_reached")]
    DailyCapReached,
    #[serde(rename = "purchase.succeeded")]
    PurchaseSucceeded,
    #[serde(rename = "purchase.failed")]
    PurchaseFailed,
    #[serde(rename = "auto_top_up.failed")]
    AutoTopUpFailed,
    #[serde(rename = "settings.changed")]
    SettingsChanged,
    #[serde(rename = "purchase.refunded")]
    PurchaseRefunded,
    #[serde(rename = "purchase.disputed")]
    PurchaseDisputed,
    #[serde(rename = "purchase.dispute_closed")]
    PurchaseDisputeClosed,
    #[serde(rename = "wallet.storage_high")]
    StorageHigh,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LowBalance => "wallet.low_balance",
            EventType::Depleted => "wallet.depleted",
            EventType::DailyCapReached => "wallet.daily_cap_reached",
            EventType::PurchaseSucceeded => "purchase.succeeded",
            EventType::PurchaseFailed => "purchase.failed",
            EventType::AutoTopUpFailed => "auto_top_up.failed",
            EventType::SettingsChanged => "settings.changed",
            EventType::PurchaseRefunded => "purchase.refunded",
            EventType::PurchaseDisputed => "purchase.disputed",
            EventType::PurchaseDisputeClosed => "purchase.dispute_closed",
            EventType::StorageHigh => "wallet.storage_high",
        }
    }
}

/// One event as the decision records it. `body` is the exact JSON sent to
/// the receiver, fixed at the decision, so every attempt sends the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub event_type: EventType,
    pub created_at: DateTime<Utc>,
    pub body: String,
}

impl Event {
    pub fn new(
        org_id: &str,
        seq: u64,
        event_type: EventType,
        created_at: DateTime<Utc>,
        data: Value,
    ) -> Event {
        let body = json!({
            "id": event_id(org_id, seq),
            "type": event_type.as_str(),
            "org_id": org_id,
            "created_at": rfc3339(created_at),
            "data": data,
        })
        .to_string();
        Event {
            seq,
            event_type,
            created_at,
            body,
        }
    }
}

/// Where an event stands with the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet answered 2xx, and no attempt failed (or none is configured).
    Pending,
    Delivered,
    /// The last attempt failed; retried with backoff.
    Failing,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failing => "failing",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failing,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// An event as `GET …/events` lists it: its body with its delivery.
pub fn listed_json(body: &str, status: DeliveryStatus, attempts: u32) -> Result<Value, String> {
    let mut value: Value =
        serde_json::from_str(body).map_err(|e| format!("stored event is unreadable: {e}"))?;
    value["delivery"] = json!({ "status": status.as_str(), "attempts": attempts });
    Ok(value)
}

/// A page of events: newest first, below `before_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    pub limit: u32,
    pub before_seq: Option<u64>,
}

/// `GET …/events` parameters: `limit` and `starting_after=evt_…`.
pub fn events_query(
    org_id: &str,
    limit: Option<&str>,
    starting_after: Option<&str>,
) -> Result<EventsQuery, Invalid> {
    let limit = list_limit(limit)?;
    let before_seq = starting_after
        .map(|id| {
            event_seq(org_id, id).ok_or_else(|| {
                Invalid::new(
                    "starting_after",
                    "must be an event id (evt_…) of this organization",
                )
            })
        })
        .transpose()?;
    Ok(EventsQuery { limit, before_seq })
}

/// The `Wallet-Signature` header of `body` sent at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, Stripe's scheme.
pub fn signature_header(secret: &[u8], t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Days an event is kept once nothing more is to be done with it
/// (delivered, or recorded where no receiver is configured).
pub const EVENTS_RETENTION_DAYS: i64 = 30;

/// Events a receiver is sent per consumer pass, and the longest a receiver
/// may take to answer one.
pub const DELIVERY_BATCH: u32 = 25;
pub const DELIVERY_TIMEOUT_SECONDS: u64 = 10;
/// Backoff between attempts: `base · 2^(attempts-1)`, at most an hour.
pub const RETRY_DELAY_MAX_SECONDS: u64 = 3600;
/// Retries the queue allows a delivery message (Cloudflare's maximum; see
/// `wrangler.toml`). With any base ≥ 1 s they span more than 24 hours.
pub const DELIVERY_MAX_RETRIES: u32 = 100;

/// Seconds before the next attempt after `attempts` failed ones.
pub fn retry_delay_seconds(base_seconds: u64, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(20);
    base_seconds
        .max(1)
        .saturating_mul(1u64 << doublings)
        .min(RETRY_DELAY_MAX_SECONDS)
}

/// Where events go: `EVENTS_WEBHOOK_URL`, signed with
/// `EVENTS_SIGNING_SECRET`; `EVENTS_RETRY_BASE_SECONDS` is the first backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub url: String,
    pub signing_secret: Vec<u8>,
    pub retry_base_seconds: u64,
}

pub const RETRY_BASE_DEFAULT_SECONDS: u64 = 10;
/// The public signing secret of `.dev.vars`, refused outside development.
pub const DEV_SIGNING_SECRET: &str = "whsec_events_local_dev";
/// The shortest signing secret accepted (Stripe's `whsec_` secrets are longer).
const SIGNING_SECRET_MIN_BYTES: usize = 16;

/// Reads the delivery settings: `Ok(None)` when no receiver is configured
/// (events are recorded and listed, not sent). Plain `http://` receivers are
/// accepted only in development.
pub fn delivery_config(
    var: impl Fn(&str) -> Option<String>,
    development: bool,
) -> Result<Option<DeliveryConfig>, String> {
    let Some(url) = var("EVENTS_WEBHOOK_URL").filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let url = url.trim().to_string();
    let secure = url.starts_with("https://");
    if !(secure || development && url.starts_with("http://")) {
        return Err(format!(
            "EVENTS_WEBHOOK_URL must be an https:// URL{}",
            if development {
                " (or http:// in development)"
            } else {
                ""
            }
        ));
    }
    let secret = var("EVENTS_SIGNING_SECRET").unwrap_or_default();
    if secret.len() < SIGNING_SECRET_MIN_BYTES {
        return Err(format!(
            "EVENTS_SIGNING_SECRET must be set, at least {SIGNING_SECRET_MIN_BYTES} bytes, when EVENTS_WEBHOOK_URL is"
        ));
    }
    if !development && secret == DEV_SIGNING_SECRET {
        return Err("EVENTS_SIGNING_SECRET is the development secret of .dev.vars".into());
    }
    let retry_base_seconds = match var("EVENTS_RETRY_BASE_SECONDS") {
        None => RETRY_BASE_DEFAULT_SECONDS,
        Some(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=RETRY_DELAY_MAX_SECONDS).contains(s))
            .ok_or_else(|| {
                format!("EVENTS_RETRY_BASE_SECONDS must be from 1 to {RETRY_DELAY_MAX_SECONDS}")
            })?,
    };
    Ok(Some(DeliveryConfig {
        url,
        signing_secret: secret.into_bytes(),
        retry_base_seconds,
    }))
}

/// The alert settings and the state of the rules, stored with the wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerts {
    pub low_balance_threshold: Option<Credits>,
    /// The low-balance alert may fire (available was at or above the threshold).
    pub low_balance_armed: bool,
    /// `wallet.depleted` fired and available has not been above zero since.
    pub depleted: bool,
    /// The UTC day `wallet.daily_cap_reached` last fired.
    pub cap_reached_day: Option<NaiveDate>,
}

impl Default for Alerts {
    fn default() -> Alerts {
        Alerts {
            low_balance_threshold: None,
            low_balance_armed: true,
            depleted: false,
            cap_reached_day: None,
        }
    }
}

/// `PUT …/alerts`: `{"low_balance_threshold": "20"}` or `null` to turn it off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsBody {
    /// Required: `None` when absent, `Some(None)` for `null`.
    #[serde(default, deserialize_with = "present")]
    pub low_balance_threshold: Option<Option<Credits>>,
}

/// A field that must be given, possibly as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Credits>>, D::Error> {
    Option::<Credits>::deserialize(d).map(Some)
}

impl AlertsBody {
    /// The threshold it sets (`None`: off).
    pub fn threshold(&self) -> Option<Credits> {
        self.low_balance_threshold.flatten()
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let Some(threshold) = self.low_balance_threshold else {
            return Err(Invalid::new(
                "low_balance_threshold",
                "is required: a credit amount, or null to turn the alert off",
            ));
        };
        match threshold {
            Some(t) if !t.is_positive() || t > crate::auto_top_up::THRESHOLD_MAX => {
                Err(Invalid::new(
                    "low_balance_threshold",
                    format!(
                        "must be greater than 0 and at most {}, or null",
                        crate::auto_top_up::THRESHOLD_MAX
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The wallet figures the rules look at, after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figures {
    pub balance: Credits,
    pub available: Credits,
    pub daily_cap: Credits,
    pub spent_today: Credits,
    pub cap_remaining: Credits,
    pub day: NaiveDate,
    pub resets_at: DateTime<Utc>,
    /// The decision refused spending for the organization's daily cap.
    pub cap_refused: bool,
}

impl Alerts {
    pub fn view(&self, available: Credits) -> Value {
        json!({
            "low_balance_threshold": self.low_balance_threshold,
            "low_balance": self.low_balance_threshold.is_some_and(|t| available < t),
        })
    }

    /// The wallet events due after a decision, in the order they fire, with
    /// their data; the rules' state moves accordingly.
    pub fn watch(&mut self, f: &Figures) -> Vec<(EventType, Value)> {
        let mut due = Vec::new();
        match self.low_balance_threshold {
            Some(threshold) if f.available < threshold => {
                if self.low_balance_armed {
                    self.low_balance_armed = false;
                    due.push((
                        EventType::LowBalance,
                        json!({ "available": f.available, "threshold": threshold }),
                    ));
                }
            }
            _ => self.low_balance_armed = true,
        }
        if f.available.is_zero() {
            if !self.depleted {
                self.depleted = true;
                due.push((
                    EventType::Depleted,
                    json!({ "balance": f.balance, "available": f.available }),
                ));
            }
        } else {
            self.depleted = false;
        }
        if (f.cap_refused || f.cap_remaining.is_zero()) && self.cap_reached_day != Some(f.day) {
            self.cap_reached_day = Some(f.day);
            due.push((
                EventType::DailyCapReached,
                json!({
                    "daily_cap": f.daily_cap,
                    "spent_today": f.spent_today,
                    "day": f.day.to_string(),
                    "resumes_at": rfc3339(f.resets_at),
                }),
            ));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn figures(available: &str) -> Figures {
        Figures {
            balance: c(available),
            available: c(available),
            daily_cap: c("500"),
            spent_today: c("10"),
            cap_remaining: c("490"),
            day: "2030-01-01".parse().unwrap(),
            resets_at: "2030-01-02T00:00:00Z".parse().unwrap(),
            cap_refused: false,
        }
    }

    fn types(due: &[(EventType, Value)]) -> Vec<&'static str> {
        due.iter().map(|(t, _)| t.as_str()).collect()
    }

    #[test]
    fn low_balance_fires_once_per_crossing_and_re_arms_at_the_threshold() {
        let mut alerts = Alerts {
            low_balance_threshold: Some(c("20")),
            ..Alerts::default()
        };
        assert!(alerts.watch(&figures("25")).is_empty());
        let due = alerts.watch(&figures("19.9999"));
        assert_eq!(types(&due), ["wallet.low_balance"]);
        assert_eq!(due[0].1["available"], "19.9999");
        assert_eq!(due[0].1["threshold"], "20");
        // Still below: nothing more, however many decisions follow.
        for available in ["19", "5", "10"] {
            assert!(alerts.watch(&figures(available)).is_empty());
        }
        // Back exactly at the threshold re-arms; the next drop fires again.
        assert!(alerts.watch(&figures("20")).is_empty());
        assert!(alerts.low_balance_armed);
        assert_eq!(types(&alerts.watch(&figures("3"))), ["wallet.low_balance"]);
        // No threshold: never fires, and stays armed for when one is set.
        alerts.low_balance_threshold = None;
        assert!(alerts.watch(&figures("1")).is_empty());
        assert!(alerts.low_balance_armed);
    }

    #[test]
    fn depleted_fires_when_available_reaches_zero_and_re_arms_when_credits_return() {
        let mut alerts = Alerts::default();
        assert_eq!(types(&alerts.watch(&figures("0"))), ["wallet.depleted"]);
        assert!(alerts.watch(&figures("0")).is_empty());
        assert!(alerts.watch(&figures("0.0001")).is_empty());
        assert_eq!(types(&alerts.watch(&figures("0"))), ["wallet.depleted"]);
    }

    #[test]
    fn the_daily_cap_fires_the_first_time_in_a_utc_day() {
        let mut alerts = Alerts::default();
        let mut f = figures("100");
        f.cap_refused = true;
        let due = alerts.watch(&f);
        assert_eq!(types(&due), ["wallet.daily_cap_reached"]);
        assert_eq!(due[0].1["resumes_at"], "2030-01-02T00:00:00.000Z");
        assert!(alerts.watch(&f).is_empty(), "once that day");
        f.cap_refused = false;
        f.cap_remaining = Credits::ZERO;
        assert!(alerts.watch(&f).is_empty());
        f.day = "2030-01-02".parse().unwrap();
        assert_eq!(types(&alerts.watch(&f)), ["wallet.daily_cap_reached"]);
    }

    #[test]
    fn ids_sort_per_organization_and_name_their_organization() {
        let a = event_id("acme", 7);
        assert!(a.starts_with("evt_") && a.ends_with("_000000000007"));
        assert!(event_id("acme", 7) < event_id("acme", 10));
        assert_ne!(event_id("acme", 7), event_id("other", 7));
        assert_eq!(event_seq("acme", &a), Some(7));
        assert_eq!(event_seq("other", &a), None);
        assert_eq!(event_seq("acme", "evt_x_000000000007"), None);
        let event = Event::new(
            "acme",
            7,
            EventType::Depleted,
            "2030-01-01T00:00:00Z".parse().unwrap(),
            json!({}),
        );
        let body: Value = serde_json::from_str(&event.body).unwrap();
        assert_eq!(body["id"], a);
        assert_eq!(body["type"], "wallet.depleted");
        assert_eq!(body["org_id"], "acme");
        assert_eq!(body["created_at"], "2030-01-01T00:00:00.000Z");
    }

    /// The value below is HMAC-SHA256("whsec_test", "1700000000.{\"id\":1}")
    /// as Python's `hmac` module computes it.
    #[test]
    fn signs_like_stripe() {
        assert_eq!(
            signature_header(b"whsec_test", 1_700_000_000, "{\"id\":1}"),
            format!("t=1700000000,v1={}", EXPECTED_SIGNATURE)
        );
    }
    const EXPECTED_SIGNATURE: &str =
        "2f441ba4b3b2d50d28a9ab9d9fd8880376ecd1eb5d0435401553f5d8d0a5dcf8";

    #[test]
    fn delivery_needs_a_secure_receiver_and_a_secret() {
        fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        assert_eq!(delivery_config(vars(&[]), false), Ok(None));
        let secret = ("EVENTS_SIGNING_SECRET", "0123456789abcdef");
        let ok = delivery_config(
            vars(&[("EVENTS_WEBHOOK_URL", "https://r.example/e"), secret]),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.retry_base_seconds, RETRY_BASE_DEFAULT_SECONDS);
        assert!(delivery_config(
            vars(&[("EVENTS_WEBHOOK_URL", "http://127.0.0.1:9/e"), secret]),
            false
        )
        .is_err());
        assert!(delivery_config(
            vars(&[("EVENTS_WEBHOOK_URL", "http://127.0.0.1:9/e"), secret]),
            true
        )
        .is_ok());
        assert!(delivery_config(
            vars(&[("EVENTS_WEBHOOK_URL", "https://r.example/e")]),
            false
        )
        .is_err());
        assert!(delivery_config(
            vars(&[
                ("EVENTS_WEBHOOK_URL", "https://r.example/e"),
                secret,
                ("EVENTS_RETRY_BASE_SECONDS", "0")
            ]),
            false
        )
        .is_err());
    }

    #[test]
    fn the_development_signing_secret_is_refused_outside_development() {
        let var = |name: &str| match name {
            "EVENTS_WEBHOOK_URL" => Some("https://r.example/e".to_string()),
            "EVENTS_SIGNING_SECRET" => Some(DEV_SIGNING_SECRET.to_string()),
            _ => None,
        };
        assert!(delivery_config(var, false).is_err());
        assert!(delivery_config(var, true).unwrap().is_some());
    }

    #[test]
    fn retries_back_off_to_an_hour_and_span_more_than_a_day() {
        assert_eq!(retry_delay_seconds(10, 1), 10);
        assert_eq!(retry_delay_seconds(10, 2), 20);
        assert_eq!(retry_delay_seconds(10, 9), 2560);
        assert_eq!(retry_delay_seconds(10, 10), 3600);
        assert_eq!(retry_delay_seconds(10, 1000), 3600);
        for base in [1, 10, 60] {
            let total: u64 = (1..=DELIVERY_MAX_RETRIES)
                .map(|a| retry_delay_seconds(base, a))
                .sum();
            assert!(total >= 24 * 3600, "base {base}: {total} s");
        }
    }
}
