//! Auto top-up: when a decision leaves `available` below the owner's
//! threshold, one purchase of the chosen pack starts, charged off-session
//! after the commit. The guardrails are state here, decided with the wallet:
//! at most one in flight, at most `monthly_limit` started per UTC calendar
//! month, and a failed charge switches it off until the owner enables it
//! again. The purchase id (and so Stripe's idempotency key) is derived from
//! the organization, the month and the purchase's ordinal in that month, so
//! no retry, crash or concurrency can start or charge a second one.

use crate::config::WalletConfig;
use crate::ids::auto_top_up_purchase_id;
use crate::money::Credits;
use crate::paging::Invalid;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const MONTHLY_LIMIT_DEFAULT: u32 = 3;
pub const MONTHLY_LIMIT_MAX: u32 = 100;
/// The highest threshold accepted: far above any pack, far inside ±2^53 units.
pub const THRESHOLD_MAX: Credits = Credits::whole(1_000_000);

/// Why auto top-up is not starting purchases although it may be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// A charge was declined or failed: off until the owner enables it again.
    PaymentFailed,
    /// No payment method was on file when a charge was due: off likewise.
    PaymentMethodRequired,
    /// This month's purchases are used: paused until the next UTC month.
    MonthlyLimitReached,
    /// A payment of the organization was disputed: the card may be stolen,
    /// so off until the owner enables it again.
    PaymentDisputed,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::PaymentFailed => "payment_failed",
            DisabledReason::PaymentMethodRequired => "payment_method_required",
            DisabledReason::MonthlyLimitReached => "monthly_limit_reached",
            DisabledReason::PaymentDisputed => "payment_disputed",
        }
    }
}

/// The settings and the guardrails' state, stored with the wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoTopUp {
    pub enabled: bool,
    pub threshold: Option<Credits>,
    pub pack_id: Option<String>,
    pub monthly_limit: u32,
    /// The UTC month `used_this_month` counts (`2026-12`).
    pub month: String,
    /// Purchases started in `month` (each one's ordinal is its count).
    pub used_this_month: u32,
    /// The purchase started and not yet final.
    pub in_flight: Option<String>,
    pub disabled_reason: Option<DisabledReason>,
}

/// `PUT …/auto-top-up`. Absent fields keep their value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoTopUpBody {
    pub enabled: bool,
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub threshold: Option<Credits>,
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub pack_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub monthly_limit: Option<u32>,
}

/// An optional field that, when present, must be a value: `null` is refused
/// (absent keeps the stored value; there is nothing to set to null).
fn given<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl AutoTopUpBody {
    /// Bounds and the catalogue; whether the result is complete enough to
    /// enable is checked against the stored settings by [`AutoTopUp::update`].
    pub fn validate(&self, config: &WalletConfig) -> Result<(), Invalid> {
        if let Some(threshold) = self.threshold {
            if !threshold.is_positive() || threshold > THRESHOLD_MAX {
                return Err(Invalid::new(
                    "threshold",
                    format!("must be greater than 0 and at most {THRESHOLD_MAX}"),
                ));
            }
        }
        if let Some(pack_id) = &self.pack_id {
            if config.pack(pack_id).is_none() {
                return Err(Invalid::new("pack_id", "is not in the catalogue"));
            }
        }
        if let Some(limit) = self.monthly_limit {
            if !(1..=MONTHLY_LIMIT_MAX).contains(&limit) {
                return Err(Invalid::new(
                    "monthly_limit",
                    format!("must be from 1 to {MONTHLY_LIMIT_MAX}"),
                ));
            }
        }
        Ok(())
    }
}

/// A purchase the decision starts: its derived id and idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub purchase_id: String,
    pub idempotency_key: String,
    pub pack_id: String,
}

/// What the end of an in-flight purchase did to auto top-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Not the purchase in flight: nothing changed.
    Unrelated,
    Succeeded,
    /// Switched off with this reason.
    Failed(DisabledReason),
}

pub fn month_of(now: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", now.year(), now.month())
}

impl AutoTopUp {
    pub fn new(now: DateTime<Utc>) -> AutoTopUp {
        AutoTopUp {
            enabled: false,
            threshold: None,
            pack_id: None,
            monthly_limit: MONTHLY_LIMIT_DEFAULT,
            month: month_of(now),
            used_this_month: 0,
            in_flight: None,
            disabled_reason: None,
        }
    }

    /// A new UTC month starts from zero, and a pause for the monthly limit
    /// ends. Whether that changed anything but the month's name (a wallet
    /// that never used auto top-up need not store the new month).
    pub fn roll_month(&mut self, now: DateTime<Utc>) -> bool {
        let month = month_of(now);
        if month <= self.month {
            return false;
        }
        let mattered = self.used_this_month > 0
            || self.disabled_reason == Some(DisabledReason::MonthlyLimitReached);
        self.month = month;
        self.used_this_month = 0;
        if self.disabled_reason == Some(DisabledReason::MonthlyLimitReached) {
            self.disabled_reason = None;
        }
        mattered
    }

    /// Applies the owner's settings. Enabling needs a threshold and a pack
    /// (given now or before) and clears why it was off; the caller has
    /// checked the payment method on file.
    pub fn update(&mut self, body: &AutoTopUpBody) -> Result<(), Invalid> {
        let mut next = self.clone();
        if let Some(threshold) = body.threshold {
            next.threshold = Some(threshold);
        }
        if let Some(pack_id) = &body.pack_id {
            next.pack_id = Some(pack_id.clone());
        }
        if let Some(limit) = body.monthly_limit {
            next.monthly_limit = limit;
        }
        if body.enabled {
            if next.threshold.is_none() {
                return Err(Invalid::new("threshold", "is required to enable"));
            }
            if next.pack_id.is_none() {
                return Err(Invalid::new("pack_id", "is required to enable"));
            }
            // Enabling (again) is the owner's word that the card may be tried.
            if !self.enabled
                || matches!(
                    self.disabled_reason,
                    Some(
                        DisabledReason::PaymentFailed
                            | DisabledReason::PaymentMethodRequired
                            | DisabledReason::PaymentDisputed
                    )
                )
            {
                next.disabled_reason = None;
            }
        } else {
            next.disabled_reason = None;
        }
        next.enabled = body.enabled;
        // A raised limit lifts this month's pause (re-checked at the next decision).
        if next.disabled_reason == Some(DisabledReason::MonthlyLimitReached)
            && next.used_this_month < next.monthly_limit
        {
            next.disabled_reason = None;
        }
        *self = next;
        Ok(())
    }

    /// After a decision: whether `available` below the threshold starts a
    /// purchase now. Returns it, or `None`; `changed` tells whether state moved
    /// (a pause for the monthly limit is recorded without a purchase).
    pub fn trigger(
        &mut self,
        org_id: &str,
        available: Credits,
        now: DateTime<Utc>,
    ) -> (Option<Start>, bool) {
        let changed = self.roll_month(now);
        let (Some(threshold), Some(pack_id)) = (self.threshold, self.pack_id.clone()) else {
            return (None, changed);
        };
        let off = matches!(
            self.disabled_reason,
            Some(
                DisabledReason::PaymentFailed
                    | DisabledReason::PaymentMethodRequired
                    | DisabledReason::PaymentDisputed
            )
        );
        if !self.enabled || off || self.in_flight.is_some() || available >= threshold {
            return (None, changed);
        }
        if self.used_this_month >= self.monthly_limit {
            let paused = self.disabled_reason != Some(DisabledReason::MonthlyLimitReached);
            self.disabled_reason = Some(DisabledReason::MonthlyLimitReached);
            return (None, changed || paused);
        }
        self.used_this_month += 1;
        let idempotency_key = format!("auto-top-up/{}/{}", self.month, self.used_this_month);
        let purchase_id = auto_top_up_purchase_id(org_id, &self.month, self.used_this_month);
        self.in_flight = Some(purchase_id.clone());
        if self.disabled_reason == Some(DisabledReason::MonthlyLimitReached) {
            self.disabled_reason = None;
        }
        (
            Some(Start {
                purchase_id,
                idempotency_key,
                pack_id,
            }),
            true,
        )
    }

    /// A purchase reached a final state. When it is the one in flight, auto
    /// top-up may start again; a failure switches it off with `reason`.
    pub fn end(&mut self, purchase_id: &str, failure: Option<DisabledReason>) -> Ended {
        if self.in_flight.as_deref() != Some(purchase_id) {
            return Ended::Unrelated;
        }
        self.in_flight = None;
        match failure {
            None => Ended::Succeeded,
            Some(reason) => {
                self.enabled = false;
                self.disabled_reason = Some(reason);
                Ended::Failed(reason)
            }
        }
    }

    /// Switches auto top-up off for `reason` (no new charge starts until the
    /// owner enables it again). Whether it was on.
    pub fn switch_off(&mut self, reason: DisabledReason) -> bool {
        if !self.enabled {
            return false;
        }
        self.enabled = false;
        self.disabled_reason = Some(reason);
        true
    }

    /// The in-flight purchase `purchase_id` was canceled before its charge
    /// was sent: none is in flight any more. Its ordinal stays counted in
    /// the month, so its derived id is never reused for another charge.
    pub fn forget_in_flight(&mut self, purchase_id: &str) -> bool {
        if self.in_flight.as_deref() != Some(purchase_id) {
            return false;
        }
        self.in_flight = None;
        true
    }

    /// The settings as `GET …/auto-top-up` shows them (the month rolled to `now`).
    pub fn view(&self, now: DateTime<Utc>) -> Value {
        let mut shown = self.clone();
        shown.roll_month(now);
        json!({
            "enabled": shown.enabled,
            "threshold": shown.threshold,
            "pack_id": shown.pack_id,
            "monthly_limit": shown.monthly_limit,
            "used_this_month": shown.used_this_month,
            "month": shown.month,
            "in_flight": shown.in_flight.is_some(),
            "in_flight_purchase_id": shown.in_flight,
            "disabled_reason": shown.disabled_reason.map(DisabledReason::as_str),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn enabled(limit: u32) -> AutoTopUp {
        let mut a = AutoTopUp::new(at("2030-01-10T00:00:00Z"));
        a.update(&AutoTopUpBody {
            enabled: true,
            threshold: Some(c("50")),
            pack_id: Some("starter".into()),
            monthly_limit: Some(limit),
        })
        .unwrap();
        a
    }

    #[test]
    fn starts_one_purchase_below_the_threshold_and_none_while_it_is_in_flight() {
        let mut a = enabled(3);
        let now = at("2030-01-10T10:00:00Z");
        assert_eq!(
            a.trigger("acme", c("50"), now),
            (None, false),
            "at the threshold"
        );
        let (start, changed) = a.trigger("acme", c("49.9999"), now);
        let start = start.expect("below the threshold");
        assert!(changed);
        assert_eq!(start.idempotency_key, "auto-top-up/2030-01/1");
        assert_eq!(
            start.purchase_id,
            auto_top_up_purchase_id("acme", "2030-01", 1)
        );
        assert_eq!(a.in_flight.as_deref(), Some(start.purchase_id.as_str()));
        // Every later decision while it is in flight starts nothing.
        for _ in 0..10 {
            assert_eq!(a.trigger("acme", c("1"), now), (None, false));
        }
        assert_eq!(a.end(&start.purchase_id, None), Ended::Succeeded);
        let (second, _) = a.trigger("acme", c("1"), now);
        assert_eq!(second.unwrap().idempotency_key, "auto-top-up/2030-01/2");
    }

    #[test]
    fn the_monthly_limit_pauses_until_the_next_month() {
        let mut a = enabled(2);
        let now = at("2030-01-31T23:00:00Z");
        for n in 1..=2 {
            let (start, _) = a.trigger("acme", c("1"), now);
            let start = start.unwrap();
            assert!(start.idempotency_key.ends_with(&format!("/{n}")));
            a.end(&start.purchase_id, None);
        }
        assert_eq!(a.trigger("acme", c("1"), now), (None, true));
        assert_eq!(a.disabled_reason, Some(DisabledReason::MonthlyLimitReached));
        assert!(a.enabled, "only paused");
        assert_eq!(
            a.trigger("acme", c("1"), now),
            (None, false),
            "recorded once"
        );
        assert_eq!(a.view(now)["disabled_reason"], "monthly_limit_reached");
        // February: the view already shows it resumed, the next decision starts one.
        let feb = at("2030-02-01T00:00:00Z");
        assert_eq!(a.view(feb)["disabled_reason"], Value::Null);
        assert_eq!(a.view(feb)["used_this_month"], 0);
        let (start, _) = a.trigger("acme", c("1"), feb);
        assert_eq!(start.unwrap().idempotency_key, "auto-top-up/2030-02/1");
        assert_eq!(a.disabled_reason, None);
    }

    #[test]
    fn a_failure_switches_it_off_until_the_owner_enables_it_again() {
        let mut a = enabled(5);
        let now = at("2030-01-10T10:00:00Z");
        let start = a.trigger("acme", c("1"), now).0.unwrap();
        assert_eq!(a.end("pur_other", None), Ended::Unrelated);
        assert_eq!(
            a.end(&start.purchase_id, Some(DisabledReason::PaymentFailed)),
            Ended::Failed(DisabledReason::PaymentFailed)
        );
        assert!(!a.enabled);
        assert_eq!(a.trigger("acme", c("1"), now), (None, false));
        a.update(&AutoTopUpBody {
            enabled: true,
            threshold: None,
            pack_id: None,
            monthly_limit: None,
        })
        .unwrap();
        assert_eq!(a.disabled_reason, None);
        let again = a.trigger("acme", c("1"), now).0.unwrap();
        assert_eq!(again.idempotency_key, "auto-top-up/2030-01/2");
    }

    #[test]
    fn enabling_needs_a_threshold_and_a_pack() {
        let mut a = AutoTopUp::new(at("2030-01-10T00:00:00Z"));
        let body = |threshold: Option<&str>, pack: Option<&str>| AutoTopUpBody {
            enabled: true,
            threshold: threshold.map(c),
            pack_id: pack.map(str::to_string),
            monthly_limit: None,
        };
        let err = a.update(&body(None, Some("starter"))).unwrap_err();
        assert_eq!(err.field, "threshold");
        let err = a.update(&body(Some("5"), None)).unwrap_err();
        assert_eq!(err.field, "pack_id");
        assert!(
            !a.enabled && a.threshold.is_none(),
            "a refused update changes nothing"
        );
        a.update(&body(Some("5"), Some("starter"))).unwrap();
        assert!(a.enabled);
        assert_eq!(a.monthly_limit, MONTHLY_LIMIT_DEFAULT);
    }

    #[test]
    fn bodies_are_bounded() {
        let config = WalletConfig::defaults();
        let pack = config.packs[0].id.clone();
        let body = |threshold: &str, pack_id: &str, limit: u32| AutoTopUpBody {
            enabled: true,
            threshold: Some(c(threshold)),
            pack_id: Some(pack_id.into()),
            monthly_limit: Some(limit),
        };
        assert!(body("10", &pack, 3).validate(&config).is_ok());
        for (bad, field) in [
            (body("0", &pack, 3), "threshold"),
            (body("1000000.0001", &pack, 3), "threshold"),
            (body("10", "nope", 3), "pack_id"),
            (body("10", &pack, 0), "monthly_limit"),
            (body("10", &pack, 101), "monthly_limit"),
        ] {
            let err = bad.validate(&config).unwrap_err();
            assert_eq!(err.field, field);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A decision leaves `available` (in credits) in month `month` (0-based from 2030-01).
        Decide { available: i64, month: u32 },
        /// The purchase in flight ends.
        End { success: bool },
        /// The owner enables it again.
        Enable,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0i64..200, 0u32..2).prop_map(|(available, month)| Op::Decide { available, month }),
            3 => any::<bool>().prop_map(|success| Op::End { success }),
            1 => Just(Op::Enable),
        ]
    }

    proptest::proptest! {
        /// Against a model recomputed from the operations alone: a purchase
        /// starts exactly when one is due, never two at once, never more than
        /// the monthly limit in a month, each with its own id.
        #[test]
        fn never_two_in_flight_nor_more_than_the_limit(
            limit in 1u32..4,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut a = enabled(limit);
            let threshold = 50; // as `enabled` sets it
            let (mut on, mut in_flight, mut month_now) = (true, None::<String>, 0u32);
            let mut used = std::collections::BTreeMap::<u32, u32>::new();
            let mut ids = std::collections::BTreeSet::new();
            for op in ops {
                match op {
                    Op::Decide { available, month } => {
                        // Time never goes back.
                        month_now = month_now.max(month);
                        let now: DateTime<Utc> =
                            format!("2030-{:02}-15T00:00:00Z", month_now + 1).parse().unwrap();
                        let due = on
                            && in_flight.is_none()
                            && available < threshold
                            && used.get(&month_now).copied().unwrap_or(0) < limit;
                        let (start, _) = a.trigger("acme", Credits::whole(available), now);
                        proptest::prop_assert_eq!(start.is_some(), due);
                        if let Some(start) = start {
                            *used.entry(month_now).or_default() += 1;
                            proptest::prop_assert!(ids.insert(start.purchase_id.clone()), "an id came twice");
                            in_flight = Some(start.purchase_id);
                        }
                    }
                    Op::End { success } => {
                        if let Some(id) = in_flight.take() {
                            let failure = (!success).then_some(DisabledReason::PaymentFailed);
                            a.end(&id, failure);
                            on &= success;
                        }
                    }
                    Op::Enable => {
                        a.update(&AutoTopUpBody { enabled: true, threshold: None, pack_id: None, monthly_limit: None })
                            .unwrap();
                        on = true;
                    }
                }
                proptest::prop_assert_eq!(&a.in_flight, &in_flight);
                proptest::prop_assert!(used.values().all(|n| *n <= limit));
            }
        }
    }
}
