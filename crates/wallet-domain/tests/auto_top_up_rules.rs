//! Auto top-up's guardrails through their public surface: what a body reads,
//! the edges of its bounds, when a month's rollover matters, what the
//! owner's changes do to a pause, and the switches a dispute or a canceled
//! charge use.

use chrono::{DateTime, Utc};
use wallet_domain::auto_top_up::{AutoTopUp, AutoTopUpBody, DisabledReason, THRESHOLD_MAX};
use wallet_domain::{Credits, WalletConfig};

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn c(text: &str) -> Credits {
    Credits::parse(text).unwrap()
}

fn body(enabled: bool, threshold: Option<&str>, limit: Option<u32>) -> AutoTopUpBody {
    AutoTopUpBody {
        enabled,
        threshold: threshold.map(c),
        pack_id: Some("starter".into()),
        monthly_limit: limit,
    }
}

fn enabled(limit: u32) -> AutoTopUp {
    let mut a = AutoTopUp::new(at("2030-01-10T00:00:00Z"));
    a.update(&body(true, Some("50"), Some(limit))).unwrap();
    a
}

/// Enabled with a limit of 2, both used this month, paused.
fn paused() -> AutoTopUp {
    let mut a = enabled(2);
    let now = at("2030-01-10T10:00:00Z");
    for _ in 0..2 {
        let start = a.trigger("acme", c("1"), now).0.unwrap();
        a.end(&start.purchase_id, None);
    }
    assert_eq!(a.trigger("acme", c("1"), now), (None, true));
    assert_eq!(a.disabled_reason, Some(DisabledReason::MonthlyLimitReached));
    a
}

#[test]
fn a_body_reads_the_fields_it_is_given() {
    let read: AutoTopUpBody = serde_json::from_str(
        r#"{"enabled":true,"threshold":"25.5","pack_id":"team","monthly_limit":7}"#,
    )
    .unwrap();
    assert_eq!(read.threshold, Some(c("25.5")));
    assert_eq!(read.pack_id.as_deref(), Some("team"));
    assert_eq!(read.monthly_limit, Some(7));
}

#[test]
fn the_highest_threshold_is_accepted() {
    let config = WalletConfig::defaults();
    assert_eq!(THRESHOLD_MAX, c("1000000"));
    assert!(body(true, Some("1000000"), None).validate(&config).is_ok());
    let err = body(true, Some("1000000.0001"), None)
        .validate(&config)
        .unwrap_err();
    assert_eq!(err.field, "threshold");
}

#[test]
fn a_new_month_matters_only_when_the_month_was_used() {
    let feb = at("2030-02-01T00:00:00Z");
    let mut fresh = enabled(3);
    assert!(
        !fresh.roll_month(feb),
        "nothing used: only the month's name"
    );
    assert_eq!(fresh.month, "2030-02");

    let mut used = enabled(3);
    let start = used
        .trigger("acme", c("1"), at("2030-01-10T10:00:00Z"))
        .0
        .unwrap();
    used.end(&start.purchase_id, None);
    assert!(used.roll_month(feb));
    assert_eq!(used.used_this_month, 0);
    assert!(!used.roll_month(feb), "the same month again");

    let mut p = paused();
    assert!(p.roll_month(feb));
    assert_eq!(p.disabled_reason, None);
}

#[test]
fn only_a_raised_limit_lifts_this_months_pause() {
    for (limit, lifted) in [(1, false), (2, false), (3, true)] {
        let mut a = paused();
        a.update(&body(true, None, Some(limit))).unwrap();
        let reason = (!lifted).then_some(DisabledReason::MonthlyLimitReached);
        assert_eq!(a.disabled_reason, reason, "limit {limit}");
    }
    // Another threshold is not the owner's word about the month.
    let mut a = paused();
    a.update(&body(true, Some("40"), None)).unwrap();
    assert_eq!(a.disabled_reason, Some(DisabledReason::MonthlyLimitReached));
    // Switching off ends the pause with everything else.
    let mut a = paused();
    a.update(&body(false, None, None)).unwrap();
    assert_eq!((a.enabled, a.disabled_reason), (false, None));
}

#[test]
fn switched_off_by_the_owner_it_starts_nothing() {
    let mut a = enabled(3);
    a.update(&body(false, None, None)).unwrap();
    assert_eq!(a.disabled_reason, None);
    assert_eq!(
        a.trigger("acme", c("1"), at("2030-01-10T10:00:00Z")),
        (None, false)
    );
    assert!(a.in_flight.is_none());
}

#[test]
fn a_dispute_switches_it_off_once() {
    let mut a = enabled(3);
    assert!(a.switch_off(DisabledReason::PaymentDisputed));
    assert_eq!(
        (a.enabled, a.disabled_reason),
        (false, Some(DisabledReason::PaymentDisputed))
    );
    assert!(!a.switch_off(DisabledReason::PaymentFailed), "already off");
    assert_eq!(a.disabled_reason, Some(DisabledReason::PaymentDisputed));
}

#[test]
fn only_the_purchase_in_flight_is_forgotten() {
    let mut a = enabled(3);
    let now = at("2030-01-10T10:00:00Z");
    let start = a.trigger("acme", c("1"), now).0.unwrap();
    assert!(!a.forget_in_flight("pur_other"));
    assert_eq!(a.in_flight.as_deref(), Some(start.purchase_id.as_str()));
    assert!(a.forget_in_flight(&start.purchase_id));
    assert!(a.in_flight.is_none());
    assert!(!a.forget_in_flight(&start.purchase_id));
    // Its ordinal stays counted: the next one is the second.
    let next = a.trigger("acme", c("1"), now).0.unwrap();
    assert_eq!(next.idempotency_key, "auto-top-up/2030-01/2");
}
