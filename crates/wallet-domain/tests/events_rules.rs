//! Events and alerts through their public surface: delivery states by name,
//! an event as `GET …/events` lists it, the alert settings' body (a
//! threshold, `null`, or nothing) and its bounds, and the alerts view.

use serde_json::json;
use wallet_domain::auto_top_up::THRESHOLD_MAX;
use wallet_domain::events::{listed_json, Alerts, AlertsBody, DeliveryStatus};
use wallet_domain::Credits;

fn c(text: &str) -> Credits {
    Credits::parse(text).unwrap()
}

#[test]
fn delivery_states_go_by_their_names() {
    for (status, name) in [
        (DeliveryStatus::Pending, "pending"),
        (DeliveryStatus::Delivered, "delivered"),
        (DeliveryStatus::Failing, "failing"),
    ] {
        assert_eq!(status.as_str(), name);
        assert_eq!(DeliveryStatus::parse(name), Some(status));
    }
    assert_eq!(DeliveryStatus::parse("sent"), None);
}

#[test]
fn a_listed_event_is_its_body_with_its_delivery() {
    let body = r#"{"id":"evt_1","type":"wallet.depleted","data":{"balance":"0"}}"#;
    let listed = listed_json(body, DeliveryStatus::Failing, 3).unwrap();
    assert_eq!(
        listed,
        json!({
            "id": "evt_1",
            "type": "wallet.depleted",
            "data": {"balance": "0"},
            "delivery": {"status": "failing", "attempts": 3},
        })
    );
    assert!(listed_json("not json", DeliveryStatus::Pending, 0)
        .unwrap_err()
        .contains("unreadable"));
}

fn alerts_body(json: &str) -> AlertsBody {
    serde_json::from_str(json).unwrap()
}

#[test]
fn the_alerts_body_tells_a_threshold_from_null_and_from_nothing() {
    let set = alerts_body(r#"{"low_balance_threshold":"20"}"#);
    assert_eq!(set.low_balance_threshold, Some(Some(c("20"))));
    assert_eq!(set.threshold(), Some(c("20")));
    assert_eq!(set.validate(), Ok(()));
    let off = alerts_body(r#"{"low_balance_threshold":null}"#);
    assert_eq!(off.low_balance_threshold, Some(None));
    assert_eq!(off.validate(), Ok(()));
    let absent = alerts_body("{}");
    assert_eq!(absent.low_balance_threshold, None);
    assert_eq!(
        absent.validate().unwrap_err().field,
        "low_balance_threshold"
    );
}

#[test]
fn an_alert_threshold_is_above_zero_and_at_most_the_highest() {
    let body = |t: Credits| AlertsBody {
        low_balance_threshold: Some(Some(t)),
    };
    assert_eq!(THRESHOLD_MAX, c("1000000"));
    for good in [c("0.0001"), c("20"), THRESHOLD_MAX] {
        assert_eq!(body(good).validate(), Ok(()), "{good}");
    }
    for bad in [Credits::ZERO, c("1000000.0001")] {
        let err = body(bad).validate().unwrap_err();
        assert_eq!(err.field, "low_balance_threshold", "{bad}");
    }
}

#[test]
fn the_alerts_view_says_whether_available_is_below_the_threshold() {
    let alerts = Alerts {
        low_balance_threshold: Some(c("20")),
        ..Alerts::default()
    };
    assert_eq!(
        alerts.view(c("19.9999")),
        json!({"low_balance_threshold": "20", "low_balance": true})
    );
    assert_eq!(alerts.view(c("20"))["low_balance"], false);
    assert_eq!(
        Alerts::default().view(Credits::ZERO),
        json!({"low_balance_threshold": null, "low_balance": false})
    );
}
